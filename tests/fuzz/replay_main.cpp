// Runs a libFuzzer harness over files without libFuzzer, so that every build
// (any compiler, no sanitizer needed) replays the committed corpus:
//
//   fuzz_<target>_replay DIR_OR_FILE...
//
// Directories are walked recursively, files replayed in sorted path order,
// each from its own heap buffer of exactly its size (so a sanitizer build
// sees every overread). A harness signals a broken property by aborting;
// this program fails (exit 1) if an argument is missing or a directory holds
// no file, so a wrong corpus path cannot pass silently.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fs = std::filesystem;

namespace {

bool collect(const fs::path& arg, std::vector<fs::path>& out) {
  std::error_code ec;
  if (fs::is_regular_file(arg, ec)) {
    out.push_back(arg);
    return true;
  }
  if (!fs::is_directory(arg, ec)) {
    std::fprintf(stderr, "replay: %s is neither a file nor a directory\n",
                 arg.c_str());
    return false;
  }
  auto before = out.size();
  for (fs::recursive_directory_iterator it{arg, ec}, end; !ec && it != end;
       it.increment(ec))
    if (it->is_regular_file())
      out.push_back(it->path());
  if (ec) {
    std::fprintf(stderr, "replay: cannot list %s: %s\n", arg.c_str(),
                 ec.message().c_str());
    return false;
  }
  if (out.size() == before) {
    std::fprintf(stderr, "replay: %s holds no input\n", arg.c_str());
    return false;
  }
  return true;
}

bool replay(const fs::path& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    return false;
  }
  std::vector<char> bytes{std::istreambuf_iterator<char>{in},
                          std::istreambuf_iterator<char>{}};
  // An exact-size heap copy; an empty input still gets a valid pointer.
  auto buf = std::make_unique<uint8_t[]>(std::max<size_t>(bytes.size(), 1));
  std::copy(bytes.begin(), bytes.end(), buf.get());
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), bytes.size());
  LLVMFuzzerTestOneInput(buf.get(), bytes.size());
  return true;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
    return 1;
  }
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i)
    if (!collect(argv[i], files))
      return 1;
  std::sort(files.begin(), files.end());
  for (const auto& file : files)
    if (!replay(file))
      return 1;
  std::printf("replayed %zu inputs\n", files.size());
  return 0;
}
