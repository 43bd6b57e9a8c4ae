# Install rules, the CMake package and the Debian package (CPack).
#
# Installed layout (prefix/):
#   include/dcpp/{core,messages,storage,actors}/*.hpp
#   lib/libdcpp_*.a
#   lib/cmake/dcpp/  dcppConfig.cmake, dcppConfigVersion.cmake,
#                    dcppTargets*.cmake, FindCAF.cmake, FindxxHash.cmake
#   bin/             dcpp, dcpp-launch, dcpp-worker, dcpp-coordinator
#
# Consumers include <dcpp/actors/checkpointer.hpp>. dcpp's headers include
# each other by their path from the repository root ("core/error.hpp"), so
# the targets' include directories are both include/ and include/dcpp/.
# Rewriting every internal include to "dcpp/..." would leave one directory;
# until then the cost is that "core/...", "storage/...", "messages/..." and
# "actors/..." also resolve into include/dcpp/ for a consumer.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(DCPP_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/dcpp)

install(DIRECTORY core messages storage actors
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/dcpp
        FILES_MATCHING PATTERN "*.hpp")

get_property(_dcpp_libraries GLOBAL PROPERTY DCPP_LIBRARIES)
install(TARGETS ${_dcpp_libraries} dcpp_all EXPORT dcppTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
                             ${CMAKE_INSTALL_INCLUDEDIR}/dcpp)
install(EXPORT dcppTargets NAMESPACE dcpp::
        DESTINATION ${DCPP_INSTALL_CMAKEDIR})

# The component names find_package(dcpp COMPONENTS ...) accepts.
set(DCPP_COMPONENTS "")
foreach(lib IN LISTS _dcpp_libraries)
  string(REGEX REPLACE "^dcpp_" "" component ${lib})
  list(APPEND DCPP_COMPONENTS ${component})
endforeach()
configure_package_config_file(cmake/dcppConfig.cmake.in
  ${PROJECT_BINARY_DIR}/dcppConfig.cmake
  INSTALL_DESTINATION ${DCPP_INSTALL_CMAKEDIR})
# 0.x: a minor version may break the interface.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dcppConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dcppConfig.cmake
              ${PROJECT_BINARY_DIR}/dcppConfigVersion.cmake
              cmake/FindCAF.cmake cmake/FindxxHash.cmake
        DESTINATION ${DCPP_INSTALL_CMAKEDIR})

# The programs users run (the demo, the benchmark, the soak test and the
# embedding example stay in the build tree).
if(DCPP_BUILD_APPS)
  install(TARGETS dcpp dcpp-launch dcpp-worker dcpp-coordinator
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# `cmake --install --strip` (and cpack, CPACK_STRIP_FILES) strips the
# programs; CMake leaves static libraries alone, as stripping their symbols
# would make them unusable, so drop only their debug information here.
install(CODE "
  if(CMAKE_INSTALL_DO_STRIP)
    file(GLOB _dcpp_archives
         \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/libdcpp_*.a\")
    foreach(_a IN LISTS _dcpp_archives)
      execute_process(COMMAND \"${CMAKE_STRIP}\" --strip-debug \"\${_a}\"
                      RESULT_VARIABLE _rc)
      if(NOT _rc EQUAL 0)
        message(FATAL_ERROR \"strip --strip-debug \${_a} failed: \${_rc}\")
      endif()
    endforeach()
  endif()")

# The Debian package: headers, libraries, CMake package and programs in one
# development package, `cpack -G DEB` in the build directory
# (tests/package/deb_test.sh installs it and builds a consumer against it).
if(DCPP_MASTER_PROJECT)
  set(CPACK_GENERATOR DEB)
  set(CPACK_PACKAGE_NAME dcpp)
  set(CPACK_PACKAGE_VENDOR dcpp)
  set(CPACK_PACKAGE_CONTACT "dcpp developers <dcpp@localhost>")
  set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
      "distributed checkpoints for libtorch, in C++, on actors")
  set(CPACK_PACKAGE_DESCRIPTION
      "dcpp saves and loads PyTorch DCP checkpoints from C++ (libtorch 1.13): \
static libraries, headers and CMake package (find_package(dcpp)), and the \
dcpp, dcpp-launch, dcpp-worker and dcpp-coordinator programs.")
  set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
  set(CPACK_STRIP_FILES ON)
  set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
  set(CPACK_DEBIAN_PACKAGE_SECTION devel)
  # The programs' shared libraries (libtorch1.13, libcaf-core0.17, libzmq5,
  # libspdlog1.10, libfmt9, libxxhash0, libc6, ...) by dpkg-shlibdeps; the
  # development packages find_package(dcpp) needs (dcppConfig.cmake finds
  # Torch, CAF, cereal, cppzmq, spdlog, xxHash and libsodium) by name.
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
  set(CPACK_DEBIAN_PACKAGE_DEPENDS
      "libtorch-dev (>= 1.13), libtorch-dev (<< 1.14), libcaf-dev (>= 0.17.6), libcaf-dev (<< 0.18), libcereal-dev, libzmq3-dev, cppzmq-dev, libspdlog-dev, libxxhash-dev, libsodium-dev, pkg-config")
  set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "cmake, g++")
  include(CPack)
endif()
