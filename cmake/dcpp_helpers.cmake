# dcpp_target_options(target): warnings and sanitizers for dcpp's own
# targets only (never via global flags).
function(dcpp_target_options target)
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

# dcpp_add_library(name DEPENDS ... SOURCES ...): a library per folder with
# a dcpp:: alias; include paths are relative to the repository root.
function(dcpp_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPENDS;PRIVATE_DEPENDS" ${ARGN})
  add_library(dcpp_${name} STATIC ${ARG_SOURCES})
  add_library(dcpp::${name} ALIAS dcpp_${name})
  target_include_directories(dcpp_${name} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>)
  target_compile_features(dcpp_${name} PUBLIC cxx_std_17)
  target_link_libraries(dcpp_${name} PUBLIC ${ARG_PUBLIC_DEPENDS}
                        PRIVATE ${ARG_PRIVATE_DEPENDS})
  set_target_properties(dcpp_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  dcpp_target_options(dcpp_${name})
endfunction()
