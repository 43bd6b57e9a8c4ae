// The safetensors backend in the storage conformance suite, in a real
// temporary directory (one model.safetensors, consolidated at commit).
// safetensors records no checksums, so the corruption case does not apply
// (`verifies_checksums = false`); the case below says so in every run.

#include "storage/safetensors.hpp"
#include "tests/storage/conformance.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <catch2/catch.hpp>

#include <dirent.h>
#include <sys/stat.h>

#include <memory>

namespace dcpp::conformance {

namespace {

class safetensors_under_test final : public storage_under_test {
public:
  storage_writer_ptr make_writer() override {
    return make_safetensors_writer(dir_);
  }

  storage_reader_ptr make_reader() override {
    return make_safetensors_reader(dir_);
  }

  /// The output files and the staging files of saves in progress, each as
  /// "<name>#<inode>": every save writes `model.safetensors` afresh and
  /// renames it over the old one, so the name alone does not tell two
  /// saves' data apart, the file does.
  std::set<std::string> data_objects() override {
    std::set<std::string> names;
    if (auto d = ::opendir(dir_.c_str())) {
      while (auto entry = ::readdir(d)) {
        std::string name = entry->d_name;
        struct stat st;
        if (name != "." && name != ".."
            && ::stat((dir_ + "/" + name).c_str(), &st) == 0)
          names.insert(name + "#" + std::to_string(st.st_ino));
      }
      ::closedir(d);
    }
    return names;
  }

  bool corrupt(const storage_info&) override {
    return false;
  }

private:
  fs_test::temp_dir tmp_;
  std::string dir_ = tmp_ / "ckpt";
};

storage_params safetensors_params() {
  storage_params params;
  params.name = "safetensors";
  params.make_storage = [] {
    return std::make_unique<safetensors_under_test>();
  };
  params.verifies_checksums = false;
  params.known_failures["a save of tensors shards and bytes reads back"]
    = "the commit consolidates: the two saved shards of 'st' become one "
      "full tensor in model.safetensors, so the metadata read back has 6 "
      "chunks, not the 7 that were saved (values are checked and equal)";
  params.known_failures["garbage collection removes older data after the "
                        "commit only"]
    = "the commit writes the consolidated model.safetensors, a data object "
      "that did not exist before finish (the older data is removed after "
      "the commit only, as the case wants)";
  return params;
}

const bool registered = register_storage_tests(safetensors_params());

} // namespace

TEST_CASE("safetensors.corruption case does not apply") {
  WARN("storage_conformance.safetensors: the case 'corrupted bytes fail the "
       "read naming the key' is not registered: the safetensors format "
       "records no checksums (staging files are checked at consolidation)");
  SUCCEED();
}

} // namespace dcpp::conformance
