// The file-system backend in the storage conformance suite, in real
// temporary directories: once with one data file per rank (the default)
// and once with one file per item, written from two threads.

#include "storage/filesystem.hpp"
#include "tests/storage/conformance.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <dirent.h>

#include <memory>

namespace dcpp::conformance {

namespace {

class filesystem_under_test final : public storage_under_test {
public:
  explicit filesystem_under_test(filesystem_writer_options opts) : opts_(opts) {
    // nop
  }

  storage_writer_ptr make_writer() override {
    return make_filesystem_writer(dir_, opts_);
  }

  storage_reader_ptr make_reader() override {
    return make_filesystem_reader(dir_);
  }

  /// The data files (`*.distcp`) in the checkpoint directory.
  std::set<std::string> data_objects() override {
    std::set<std::string> names;
    if (auto d = ::opendir(dir_.c_str())) {
      while (auto entry = ::readdir(d)) {
        std::string name = entry->d_name;
        auto suffix = std::string{".distcp"};
        if (name.size() > suffix.size()
            && name.compare(name.size() - suffix.size(), suffix.size(), suffix)
                 == 0)
          names.insert(std::move(name));
      }
      ::closedir(d);
    }
    return names;
  }

  /// Flips a bit in the middle of the item's record: for the tensors the
  /// suite corrupts (256 KiB) that is tensor data, not archive framing.
  bool corrupt(const storage_info& info) override {
    auto path = dir_ + "/" + info.relative_path;
    if (!fs_test::exists(path))
      return false;
    auto data = fs_test::read_file(path);
    auto pos = info.offset + info.length / 2;
    if (info.length == 0 || pos >= data.size())
      return false;
    data[pos] = static_cast<char>(data[pos] ^ 0x20);
    fs_test::write_file(path, data);
    return true;
  }

private:
  fs_test::temp_dir tmp_;
  std::string dir_ = tmp_ / "ckpt";
  filesystem_writer_options opts_;
};

/// The backend with writer options `opts`, as `name`.
storage_params filesystem_params(std::string name,
                                 filesystem_writer_options opts) {
  storage_params params;
  params.name = std::move(name);
  params.make_storage = [opts] {
    return std::make_unique<filesystem_under_test>(opts);
  };
  return params;
}

filesystem_writer_options per_item_options() {
  filesystem_writer_options opts;
  opts.single_file_per_rank = false;
  opts.thread_count = 2;
  return opts;
}

const bool registered_per_rank = register_storage_tests(
  filesystem_params("filesystem", {}));

const bool registered_per_item = register_storage_tests(
  filesystem_params("filesystem_per_item", per_item_options()));

} // namespace

} // namespace dcpp::conformance
