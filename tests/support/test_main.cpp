#define CATCH_CONFIG_MAIN // compiled once; keeps the test TUs fast to rebuild
#include <catch2/catch.hpp>
