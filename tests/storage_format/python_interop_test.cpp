// `.metadata` written by dcpp, read by the real PyTorch DCP (Debian's
// /usr/bin/python3 with python3-torch 1.13, or $DCPP_TEST_PYTHON, through
// scripts/interop/check_metadata_with_torch.py). When that interpreter or torch
// is missing, each test reports SKIP with the reason (tests/support/skip.hpp).

#include "core/error.hpp"
#include "storage/metadata_codec.hpp"
#include "tests/storage_format/test_data.hpp"
#include "tests/support/skip.hpp"

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

using namespace dcpp;
namespace fs = std::filesystem;

namespace {

std::string python() {
  if (auto env = std::getenv("DCPP_TEST_PYTHON"); env && *env)
    return env;
  return "/usr/bin/python3";
}

struct run_result {
  int status = -1;
  std::string out;
  std::string err;
};

std::string quote(const std::string& arg) {
  std::string out = "'";
  for (auto ch : arg) {
    if (ch == '\'')
      out += "'\\''";
    else
      out += ch;
  }
  return out + "'";
}

/// Runs the checker script with `args`; stderr goes to a file in `dir`.
run_result run_checker(const fs::path& dir, std::vector<std::string> args) {
  auto err_file = (dir / "stderr.txt").string();
  std::string cmd = quote(python()) + " -B "
                    + quote(std::string{DCPP_SOURCE_DIR}
                            + "/scripts/interop/check_metadata_with_torch.py");
  for (const auto& arg : args)
    cmd += " " + quote(arg);
  cmd += " 2>" + quote(err_file);
  run_result result;
  auto pipe = popen(cmd.c_str(), "r");
  if (!pipe)
    return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0)
    result.out.append(buf, n);
  auto status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::error_code ec;
  if (fs::exists(err_file, ec))
    result.err = test::read_file(err_file);
  return result;
}

/// The canonical dump the checker prints, made from our struct.
std::string dump(const metadata& md) {
  std::vector<std::string> lines;
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (item.kind == item_kind::bytes) {
      lines.push_back("item " + fqn + " bytes");
      continue;
    }
    const auto& t = item.tensor;
    const auto& p = t.properties;
    std::string chunks;
    for (const auto& c : t.chunks) {
      if (!chunks.empty())
        chunks += ";";
      chunks += to_string(c.offsets) + "/" + to_string(c.sizes);
    }
    lines.push_back(
      "item " + fqn + " tensor " + to_string(p.type)
      + " size=" + to_string(t.size) + " rg=" + std::to_string(p.requires_grad)
      + " pin=" + std::to_string(p.pin_memory) + " fmt=" + to_string(p.format)
      + " layout=" + p.layout + " chunks=" + chunks);
  }
  for (const auto& [idx, info] : md.storage_data) {
    auto offset = idx.has_offset ? to_string(idx.offset) : "-";
    auto hint = idx.index < 0 ? "-" : std::to_string(idx.index);
    auto checksum = info.checksum.empty() ? "-" : info.checksum;
    lines.push_back("storage " + idx.fqn + " " + offset + " index=" + hint + " "
                    + info.relative_path + " " + std::to_string(info.offset)
                    + " " + std::to_string(info.length)
                    + " checksum=" + checksum);
  }
  for (const auto& [key, path] : md.planner_data) {
    std::string parts;
    for (const auto& part : path)
      parts += std::string{parts.empty() ? "" : "|"} + (part.index ? "#" : "")
               + part.key;
    lines.push_back("planner " + key + " " + parts);
  }
  lines.push_back("version " + (md.version.empty() ? "-" : md.version));
  lines.push_back("save_id " + (md.save_id.empty() ? "-" : md.save_id));
  lines.push_back("checkpoint_id "
                  + (md.checkpoint_id.empty() ? "-" : md.checkpoint_id));
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (const auto& line : lines)
    out += line + "\n";
  return out;
}

/// Why the checker cannot run here, or "" if it can.
std::string checker_missing(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(python(), ec))
    return python()
           + " does not exist; cannot check .metadata against real "
             "PyTorch";
  // Any valid file will do to find out whether torch imports.
  auto probe = run_checker(
    dir, {"dump", test::data_path("dcp-1.13/ckpt_113_per_rank/.metadata")});
  if (probe.status == 77)
    return probe.out.empty() ? python() + " cannot import torch" : probe.out;
  if (probe.status != 0) {
    FAIL("checker failed on a PyTorch-written fixture:\n"
         << probe.out << probe.err);
  }
  return {};
}

metadata decode_fixture(const std::string& rel) {
  auto md = decode_metadata(test::read_data(rel));
  if (!md)
    FAIL(describe(md.error()));
  return std::move(*md);
}

} // namespace

TEST_CASE("torch 1.13 DCP loads a checkpoint whose .metadata dcpp wrote",
          "[metadata][python]") {
  test::temp_dir tmp;
  if (auto why = checker_missing(tmp.path()); !why.empty())
    DCPP_SKIP(why);
  // The per-rank fixture with our own .metadata (plus two checksums, which
  // Python must accept as extra attributes).
  auto md = decode_fixture("dcp-1.13/ckpt_113_per_rank/.metadata");
  md.storage_data.at(metadata_index{"f32", {0, 0}}).checksum
    = "xxh64:0011223344556677";
  md.storage_data.at(metadata_index{"cfg"}).checksum = "xxh64:8899aabbccddeeff";
  auto ckpt = tmp.path() / "ckpt";
  fs::create_directory(ckpt);
  for (auto file : {"__0_0.distcp", "__1_0.distcp"})
    fs::copy_file(test::data_path("dcp-1.13/ckpt_113_per_rank/") + file,
                  ckpt / file);
  test::write_file((ckpt / ".metadata").string(),
                   encode_metadata(md, metadata_flavor::torch_1_13));
  // Unpickled by plain pickle.load into torch's own classes: equal facts.
  auto dumped = run_checker(tmp.path(),
                            {"dump", (ckpt / ".metadata").string()});
  INFO(dumped.err);
  REQUIRE(dumped.status == 0);
  CHECK(dumped.out == dump(md));
  // And the data loads through DCP's own reader and planner.
  auto loaded = run_checker(tmp.path(), {"load", ckpt.string()});
  INFO(loaded.out << loaded.err);
  CHECK(loaded.status == 0);
}

TEST_CASE("torch 1.13 unpickles every field dcpp writes",
          "[metadata][python]") {
  test::temp_dir tmp;
  if (auto why = checker_missing(tmp.path()); !why.empty())
    DCPP_SKIP(why);
  // Big offsets (LONG1), 0-d, non-default properties, planner_data.
  metadata md;
  auto& w = md.state_dict_metadata["layers.0.w"];
  w.kind = item_kind::tensor;
  w.tensor.properties.type = dtype::float16;
  w.tensor.properties.requires_grad = true;
  w.tensor.size = {6, 2};
  w.tensor.chunks = {{{0, 0}, {3, 2}}, {{3, 0}, {3, 2}}};
  auto& s = md.state_dict_metadata["scalar"];
  s.kind = item_kind::tensor;
  s.tensor.properties.type = dtype::complex64;
  s.tensor.properties.pin_memory = true;
  s.tensor.properties.format = memory_format::channels_last;
  s.tensor.chunks = {{{}, {}}};
  md.state_dict_metadata["step"] = item_metadata::bytes();
  md.storage_data[metadata_index{"layers.0.w", {0, 0}, 0}]
    = {"__0_0.distcp", 0, 747, "xxh64:0123456789abcdef"};
  md.storage_data[metadata_index{"layers.0.w", {3, 0}, 1}]
    = {"__1_0.distcp", (uint64_t{1} << 31) + 5, (uint64_t{1} << 32) + 1, ""};
  md.storage_data[metadata_index{"scalar", {}, 0}]
    = {"__0_0.distcp", uint64_t{1} << 62, 747, ""};
  md.storage_data[metadata_index{"step"}] = {"__0_0.distcp", 747, 431, ""};
  md.planner_data = {{"layers.0.w", {"layers", path_element::position(0), "w"}},
                     {"step", {"step"}}};
  auto file = (tmp.path() / "md113").string();
  test::write_file(file, encode_metadata(md, metadata_flavor::torch_1_13));
  auto dumped = run_checker(tmp.path(), {"dump", file});
  INFO(dumped.err);
  REQUIRE(dumped.status == 0);
  CHECK(dumped.out == dump(md));
  // The torch >= 2 layout, read with its class paths mapped onto 1.13's:
  // version and storage_meta come through as well.
  md.version = "1.0.0";
  md.save_id = "save-42";
  md.checkpoint_id = "/ckpt/step-42";
  file = (tmp.path() / "md2").string();
  test::write_file(file, encode_metadata(md, metadata_flavor::torch_2));
  dumped = run_checker(tmp.path(), {"dump2", file});
  INFO(dumped.err);
  REQUIRE(dumped.status == 0);
  CHECK(dumped.out == dump(md));
}
