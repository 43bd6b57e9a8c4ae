// A consumer of dcpp's CMake package (tests/package): saves a small state
// dict with the public checkpointer (no_dist) into a fresh directory, loads
// it into zeroed tensors and checks the values. Exit 0 on success.

#include <ATen/ATen.h>
#include <dcpp/actors/checkpointer.hpp>
#include <dcpp/core/error.hpp>
#include <dcpp/storage/filesystem.hpp>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

namespace {

int fail(const std::string& what) {
  std::cerr << "consumer: " << what << "\n";
  return 1;
}

} // namespace

int main() {
  char tmpl[] = "/tmp/dcpp_consumer_XXXXXX";
  if (mkdtemp(tmpl) == nullptr)
    return fail("mkdtemp failed");
  const std::string dir = tmpl;
  struct remove_dir {
    std::string path;
    ~remove_dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } cleanup{dir};

  dcpp::state_dict sd;
  auto weight = at::arange(12, at::kFloat).reshape({3, 4});
  sd.nested("model").set("weight", weight);
  sd.set("step", dcpp::bytes_value::from_int(42));

  dcpp::checkpointer_options opts;
  opts.no_dist = true;
  dcpp::checkpointer cp{dcpp::make_filesystem_writer(dir),
                        dcpp::make_filesystem_reader(dir), opts};
  auto md = cp.save(sd);
  if (!md)
    return fail("save: " + dcpp::describe(md.error()));
  if (!std::filesystem::exists(dir + "/.metadata"))
    return fail("save wrote no " + dir + "/.metadata");

  dcpp::state_dict loaded;
  loaded.nested("model").set("weight", at::zeros({3, 4}, at::kFloat));
  loaded.set("step", dcpp::bytes_value{});
  if (auto err = cp.load(loaded))
    return fail("load: " + dcpp::describe(err));

  auto got = std::get<at::Tensor>(*loaded.nested("model").find("weight"));
  if (!at::equal(got, weight))
    return fail("loaded weight differs from the saved one");
  auto step = std::get<dcpp::bytes_value>(*loaded.find("step")).to_int();
  if (!step || *step != 42)
    return fail("loaded step is not 42");
  std::cout << "consumer: saved and loaded " << md->state_dict_metadata.size()
            << " items in " << dir << "\n";
  return 0;
}
