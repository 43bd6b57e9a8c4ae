// A c10d TCPStore server, as torchrun's agent runs one, holding a value of
// the test's choice: the store a rank reads the coordinator's endpoint from
// (actors/transport/tcp_store_rendezvous.hpp), written by someone hostile.
//
//   store_tool PORT KEY VALUE_FILE
//
// Listens on 127.0.0.1:PORT, sets KEY to the bytes of VALUE_FILE, prints
// "ready" and serves until killed.

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: store_tool PORT KEY VALUE_FILE\n");
    return 2;
  }
  std::ifstream in{argv[3], std::ios::binary};
  std::vector<uint8_t> value{std::istreambuf_iterator<char>{in}, {}};
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(std::atoi(argv[1]));
    opts.isServer = true;
    opts.waitWorkers = false;
    c10d::TCPStore store{"127.0.0.1", opts};
    store.set(argv[2], value);
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;)
      ::pause();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "store_tool: %s\n", e.what());
    return 1;
  }
}
