# Every dependency comes from Debian's packages (bookworm).

find_package(Threads REQUIRED)

# CAF 0.17.6 ships no CMake package: wrap its libraries as imported targets.
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
find_library(CAF_CORE_LIBRARY caf_core REQUIRED)
find_library(CAF_IO_LIBRARY caf_io REQUIRED)
if(NOT TARGET CAF::core)
  add_library(CAF::core UNKNOWN IMPORTED)
  set_target_properties(CAF::core PROPERTIES
    IMPORTED_LOCATION "${CAF_CORE_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES Threads::Threads)
  add_library(CAF::io UNKNOWN IMPORTED)
  set_target_properties(CAF::io PROPERTIES
    IMPORTED_LOCATION "${CAF_IO_LIBRARY}"
    INTERFACE_LINK_LIBRARIES CAF::core)
endif()

# libtorch 1.13 (libtorch-dev). TorchConfig adds flags to CMAKE_CXX_FLAGS;
# keep ours clean and take only its targets.
set(_dcpp_saved_cxx_flags "${CMAKE_CXX_FLAGS}")
find_package(Torch REQUIRED)
set(CMAKE_CXX_FLAGS "${_dcpp_saved_cxx_flags}")

find_package(cereal REQUIRED)
find_package(cppzmq REQUIRED)
# libsodium (libsodium-dev, what libzmq's CURVE is built on): derives the
# CURVE keys from the job's secret. No CMake package; pkg-config has it.
find_package(PkgConfig REQUIRED)
pkg_check_modules(sodium REQUIRED IMPORTED_TARGET libsodium)
if(NOT TARGET PkgConfig::sodium)
  message(FATAL_ERROR "libsodium not found (apt install libsodium-dev)")
endif()
find_package(CLI11 REQUIRED)
find_package(spdlog REQUIRED)

find_path(XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
find_library(XXHASH_LIBRARY xxhash REQUIRED)
if(NOT TARGET xxHash::xxhash)
  add_library(xxHash::xxhash UNKNOWN IMPORTED)
  set_target_properties(xxHash::xxhash PROPERTIES
    IMPORTED_LOCATION "${XXHASH_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${XXHASH_INCLUDE_DIR}")
endif()

if(DCPP_BUILD_TESTS)
  find_package(Catch2 2 REQUIRED)
endif()
