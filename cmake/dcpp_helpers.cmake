# dcpp_target_options(target): warnings and sanitizers for dcpp's own
# targets only (never via global flags). It also marks the target as dcpp's
# own (DCPP_OWN_TARGET, see dcpp_add_library).
function(dcpp_target_options target)
  set_target_properties(${target} PROPERTIES DCPP_OWN_TARGET ON)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(DCPP_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(DCPP_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined
                           -fno-sanitize=null -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# The build tree's `<dcpp/...>`: DCPP_BUILD_INCLUDE_DIR/dcpp is a symbolic
# link to the source root, so a project that adds dcpp as a subdirectory
# spells dcpp's headers as an installed dcpp's consumers do
# (`#include <dcpp/actors/checkpointer.hpp>`). A link, not a copy: the
# compiler sees one file under both spellings (#pragma once holds) and edits
# show at once.
set(DCPP_BUILD_INCLUDE_DIR ${PROJECT_BINARY_DIR}/include)
file(MAKE_DIRECTORY ${DCPP_BUILD_INCLUDE_DIR})
file(CREATE_LINK ${PROJECT_SOURCE_DIR} ${DCPP_BUILD_INCLUDE_DIR}/dcpp SYMBOLIC)

# dcpp_add_library(name SOURCES ... PUBLIC_DEPENDS ... PRIVATE_DEPENDS ...):
# a library per folder with a dcpp:: alias (dcpp_<name>, exported as
# dcpp::<name>); include paths are relative to the repository root.
#
# Its users see the source root (dcpp's own spelling, "core/error.hpp") and
# DCPP_BUILD_INCLUDE_DIR (<dcpp/core/error.hpp>); dcpp's own targets
# (DCPP_OWN_TARGET) only the former, so their compile commands, and ccache's
# hits, do not depend on the build directory. Installed, the two are
# include/dcpp and include (cmake/dcpp_install.cmake).
function(dcpp_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPENDS;PRIVATE_DEPENDS" ${ARGN})
  add_library(dcpp_${name} STATIC ${ARG_SOURCES})
  add_library(dcpp::${name} ALIAS dcpp_${name})
  set(not_own "$<NOT:$<BOOL:$<TARGET_PROPERTY:DCPP_OWN_TARGET>>>")
  target_include_directories(dcpp_${name}
    PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
    INTERFACE $<BUILD_INTERFACE:$<${not_own}:${DCPP_BUILD_INCLUDE_DIR}>>)
  target_compile_features(dcpp_${name} PUBLIC cxx_std_17)
  target_link_libraries(dcpp_${name} PUBLIC ${ARG_PUBLIC_DEPENDS}
                        PRIVATE ${ARG_PRIVATE_DEPENDS})
  set_target_properties(dcpp_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON
                        EXPORT_NAME ${name})
  dcpp_target_options(dcpp_${name})
  set_property(GLOBAL APPEND PROPERTY DCPP_LIBRARIES dcpp_${name})
endfunction()
