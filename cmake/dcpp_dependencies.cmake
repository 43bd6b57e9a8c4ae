# Every dependency comes from Debian's packages (bookworm). The libraries'
# dependencies are found the same way by the installed dcppConfig.cmake
# (cmake/dcppConfig.cmake.in); keep the two lists in step.

# As a subdirectory of another project, dcpp's dependencies must be visible
# to that project too (its targets link dcpp::* and with them torch,
# CAF::core, ...): find_package makes its imported targets global.
if(NOT DCPP_MASTER_PROJECT)
  if(CMAKE_VERSION VERSION_LESS 3.24)
    message(FATAL_ERROR "dcpp as a subdirectory needs CMake 3.24 or newer "
            "(CMAKE_FIND_PACKAGE_TARGETS_GLOBAL); this is ${CMAKE_VERSION}. "
            "Install dcpp and use find_package(dcpp) instead.")
  endif()
  set(CMAKE_FIND_PACKAGE_TARGETS_GLOBAL ON)
endif()

find_package(Threads REQUIRED)

# CAF 0.17.6 and xxHash ship no CMake package: cmake/FindCAF.cmake and
# cmake/FindxxHash.cmake wrap them as imported targets.
find_package(CAF REQUIRED)

# libtorch 1.13 (libtorch-dev). TorchConfig may add flags to
# CMAKE_CXX_FLAGS; keep ours clean and take only its targets.
set(_dcpp_saved_cxx_flags "${CMAKE_CXX_FLAGS}")
find_package(Torch REQUIRED)
set(CMAKE_CXX_FLAGS "${_dcpp_saved_cxx_flags}")

find_package(cereal REQUIRED)
find_package(cppzmq REQUIRED)
# libsodium (libsodium-dev, what libzmq's CURVE is built on): derives the
# CURVE keys from the job's secret. No CMake package; pkg-config has it.
find_package(PkgConfig REQUIRED)
pkg_check_modules(sodium REQUIRED IMPORTED_TARGET GLOBAL libsodium)
if(NOT TARGET PkgConfig::sodium)
  message(FATAL_ERROR "libsodium not found (apt install libsodium-dev)")
endif()
find_package(spdlog REQUIRED)
find_package(xxHash REQUIRED)

# Only the programs and the tests parse command lines.
if(DCPP_BUILD_APPS OR DCPP_BUILD_TESTS)
  find_package(CLI11 REQUIRED)
endif()
if(DCPP_BUILD_TESTS)
  find_package(Catch2 2 REQUIRED)
endif()
