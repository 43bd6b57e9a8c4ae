// The `dcpp` CLI run as a real process (the binary at DCPP_CLI) in scratch
// directories: inspect, export, import, verify, and every bad input ending
// in one line on stderr with exit code 1 (2 for usage errors).

#include "actors/checkpointer.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/state_dict.hpp"
#include "tests/support/skip.hpp"

#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace fs = std::filesystem;
using namespace dcpp;

namespace {

const char* python = "/usr/bin/python3";

struct cli_result {
  int code = -1;
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in{p, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& data) {
  std::ofstream out{p, std::ios::binary | std::ios::trunc};
  out << data;
}

int run_shell(const std::string& cmd) {
  auto rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

bool python_has_torch() {
  static int rc = run_shell(std::string{python}
                            + " -c 'import torch' >/dev/null 2>&1");
  return rc == 0;
}

/// A scratch directory removed at the end of a test.
struct scratch {
  fs::path root;

  scratch() {
    static std::atomic<int> n{0};
    root = fs::temp_directory_path()
           / ("dcpp_cli_test_" + std::to_string(::getpid()) + "_"
              + std::to_string(n++));
    fs::remove_all(root);
    fs::create_directories(root);
  }

  ~scratch() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }

  std::string path(const std::string& name) const {
    return (root / name).string();
  }

  cli_result cli(const std::string& args) const {
    return program(DCPP_CLI, args);
  }

  /// Runs `binary` with `args` (shell words).
  cli_result program(const std::string& binary, const std::string& args) const {
    cli_result r;
    auto out = root / "stdout.txt";
    auto err = root / "stderr.txt";
    r.code = run_shell(binary + " " + args + " >" + out.string() + " 2>"
                       + err.string());
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  /// Runs a Python script (written to a file) with /usr/bin/python3.
  int py(const std::string& script) const {
    auto file = root / "script.py";
    spit(file, script);
    return run_shell(std::string{python} + " " + file.string());
  }
};

/// Writes the test checkpoint: `w` (3, 4) float32, `big` 4096 float32,
/// `opt.step` = 7, `opt.name` = "hello" (bytes items).
void write_checkpoint(const std::string& dir) {
  state_dict sd;
  sd.set("w", at::arange(12, at::kFloat).reshape({3, 4}));
  sd.set("big", at::arange(4096, at::kFloat));
  auto& opt = sd.nested("opt");
  opt.set("step", bytes_value::from_int(7));
  opt.set("name", bytes_value::from_string("hello"));
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{make_filesystem_writer(dir), make_filesystem_reader(dir),
                  opts};
  auto md = cp.save(sd);
  REQUIRE(md);
}

metadata read_md(const std::string& dir) {
  auto md = decode_metadata(slurp(fs::path{dir} / ".metadata"));
  REQUIRE(md);
  return *md;
}

/// Loads a whole checkpoint; returns flattened key -> value.
struct loaded {
  state_dict sd;
  std::map<std::string, value*> items;
};

void load_all(const std::string& dir, loaded& out) {
  out.sd = make_state_dict_for(read_md(dir));
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{make_filesystem_writer(dir), make_filesystem_reader(dir),
                  opts};
  auto err = cp.load(out.sd);
  INFO(describe(err));
  REQUIRE(!err);
  auto flat = flatten(out.sd);
  REQUIRE(flat);
  for (auto& [k, v] : flat->items)
    out.items[k] = v;
}

const at::Tensor& tensor_at(loaded& l, const std::string& key) {
  INFO(key);
  REQUIRE(l.items.count(key) == 1);
  auto* t = std::get_if<at::Tensor>(l.items[key]);
  REQUIRE(t);
  return *t;
}

const bytes_value& bytes_at(loaded& l, const std::string& key) {
  INFO(key);
  REQUIRE(l.items.count(key) == 1);
  auto* b = std::get_if<bytes_value>(l.items[key]);
  REQUIRE(b);
  return *b;
}

/// One line on stderr starting with "dcpp: ".
void check_one_line_error(const cli_result& r, int code = 1) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == code);
  CHECK(r.err.rfind("dcpp: ", 0) == 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

std::string fixture_113() {
  return std::string{DCPP_TEST_DATA_DIR} + "/dcp-1.13/ckpt_113_per_rank";
}

} // namespace

TEST_CASE("inspect lists keys, shapes and chunks of a dcpp checkpoint") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto r = s.cli("inspect --json " + dir);
  INFO(r.err);
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  auto& items = j["items"];
  CHECK(items.size() == 4);
  CHECK(items["w"]["kind"] == "tensor");
  CHECK(items["w"]["dtype"] == "float32");
  CHECK(items["w"]["shape"] == nlohmann::json::array({3, 4}));
  CHECK(items["w"]["chunks"].size() == 1);
  CHECK(items["w"]["chunks"][0]["sizes"] == nlohmann::json::array({3, 4}));
  CHECK(items["w"]["chunks"][0]["length"].get<uint64_t>() > 48);
  CHECK(
    items["w"]["chunks"][0]["checksum"].get<std::string>().rfind("xxh64:", 0)
    == 0);
  CHECK(items["big"]["shape"] == nlohmann::json::array({4096}));
  CHECK(items["opt.step"]["kind"] == "bytes");
  CHECK(items["opt.name"]["kind"] == "bytes");
  CHECK(j["summary"]["keys"] == 4);
  CHECK(j["summary"]["tensors"] == 2);
  CHECK(j["summary"]["tensor_bytes"] == 4 * (12 + 4096));
  CHECK(j["summary"]["flavor"] == "2");
  auto t = s.cli("inspect " + dir);
  REQUIRE(t.code == 0);
  CHECK(t.out.find("KEY") != std::string::npos);
  CHECK(t.out.find("[3, 4]") != std::string::npos);
  CHECK(t.out.find("opt.step") != std::string::npos);
  CHECK(t.out.find("keys: 4 (2 tensors, 2 bytes items)") != std::string::npos);
}

TEST_CASE("inspect shows the shards of a torch 1.13 checkpoint") {
  scratch s;
  auto r = s.cli("inspect --json " + fixture_113());
  INFO(r.err);
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  auto& st = j["items"]["st"];
  CHECK(st["shape"] == nlohmann::json::array({4, 3}));
  REQUIRE(st["chunks"].size() == 2);
  CHECK(st["chunks"][1]["offsets"] == nlohmann::json::array({2, 0}));
  CHECK(st["chunks"][0]["checksum"].is_null());
  CHECK(j["items"]["epoch"]["kind"] == "bytes");
  CHECK(j["summary"]["flavor"] == "1.13");
  CHECK(j["summary"]["files"].size() == 2);
  auto t = s.cli("inspect " + fixture_113());
  REQUIRE(t.code == 0);
  CHECK(t.out.find("2/2") != std::string::npos);
}

TEST_CASE("export writes a torch.save file that Python loads", "[python]") {
  if (!python_has_torch())
    DCPP_SKIP(python << " cannot import torch");
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto pt = s.path("out.pt");
  auto r = s.cli("export " + dir + " " + pt);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(!fs::exists(pt + ".tmp"));
  CHECK(s.py("import torch\n"
             "d = torch.load('"
             + pt
             + "')\n"
               "assert isinstance(d, dict), type(d)\n"
               "assert sorted(d) == ['big', 'opt', 'w'], d\n"
               "assert torch.equal(d['w'], torch.arange(12.).reshape(3, 4))\n"
               "assert torch.equal(d['big'], torch.arange(4096.))\n"
               "assert d['opt'] == {'step': 7, 'name': 'hello'}, d['opt']\n")
        == 0);
  // --flat: one dict of the dotted keys, as before nesting was restored.
  auto flat = s.path("flat.pt");
  auto rf = s.cli("export --flat " + dir + " " + flat);
  INFO(rf.err);
  REQUIRE(rf.code == 0);
  CHECK(s.py("import torch\n"
             "d = torch.load('"
             + flat
             + "')\n"
               "assert sorted(d) == ['big', 'opt.name', 'opt.step', 'w'], d\n"
               "assert d['opt.step'] == 7 and d['opt.name'] == 'hello'\n")
        == 0);
  auto pt2 = s.path("fixture.pt");
  auto r2 = s.cli("export " + fixture_113() + " " + pt2);
  INFO(r2.err);
  REQUIRE(r2.code == 0);
  CHECK(s.py("import torch\n"
             "d = torch.load('"
             + pt2
             + "')\n"
               "assert torch.equal(d['st'], "
               "torch.arange(12.).reshape(4, 3) + 0.5)\n"
               "assert d['bf16'].dtype == torch.bfloat16\n"
               "assert torch.equal(d['f32_t'], "
               "torch.arange(12.).reshape(3, 4).t())\n"
               "assert d['epoch'] == 3\n"
               "assert d['cfg'] == {'lr': 0.1, 'name': 'dcp'}, d['cfg']\n")
        == 0);
}

TEST_CASE("import converts a Python torch.save file", "[python]") {
  if (!python_has_torch())
    DCPP_SKIP(python << " cannot import torch");
  scratch s;
  auto pt = s.path("in.pt");
  REQUIRE(s.py("import torch\n"
               "torch.save({'a': torch.arange(6.).reshape(2, 3),\n"
               "            'nested': {'b': torch.tensor([1, 2, 3]),\n"
               "                       'bf': torch.tensor([1.5, -2.],"
               " dtype=torch.bfloat16)},\n"
               "            'step': 5, 'lr': 0.5, 'name': 'x'}, '"
               + pt + "')\n")
          == 0);
  for (auto flavor : {"1.13", "2"}) {
    auto dir = s.path(std::string{"ckpt_"} + flavor);
    auto r = s.cli("import --flavor " + std::string{flavor} + " " + pt + " "
                   + dir);
    INFO(r.err);
    REQUIRE(r.code == 0);
    loaded l;
    load_all(dir, l);
    CHECK(
      at::equal(tensor_at(l, "a"), at::arange(6, at::kFloat).reshape({2, 3})));
    CHECK(at::equal(tensor_at(l, "nested.b"), at::arange(1, 4, at::kLong)));
    CHECK(tensor_at(l, "nested.bf").scalar_type() == at::kBFloat16);
    CHECK(*bytes_at(l, "step").to_int() == 5);
    CHECK(*bytes_at(l, "lr").to_double() == 0.5);
    CHECK(*bytes_at(l, "name").to_string() == "x");
    CHECK(s.cli("verify " + dir).code == 0);
  }
  auto again = s.cli("import " + pt + " " + s.path("ckpt_2"));
  check_one_line_error(again);
  // model.state_dict() is an OrderedDict (with a _metadata attribute).
  auto od = s.path("od.pt");
  REQUIRE(s.py("import torch\n"
               "m = torch.nn.Linear(3, 2)\n"
               "torch.save(m.state_dict(), '"
               + od + "')\n")
          == 0);
  auto r = s.cli("import " + od + " " + s.path("ckpt_od"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  loaded l;
  load_all(s.path("ckpt_od"), l);
  CHECK(tensor_at(l, "weight").sizes() == at::IntArrayRef{2, 3});
  CHECK(tensor_at(l, "bias").sizes() == at::IntArrayRef{2});
}

TEST_CASE("export refuses a flatten mapping that is not one tree, naming "
          "the key") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto md = read_md(dir);
  // "w" is a value; "opt.step" now claims a path through it (keys are
  // placed in sorted order, so "w" is the one found on a container).
  md.planner_data["opt.step"] = {"w", "step"};
  spit(fs::path{dir} / ".metadata", encode_metadata(md));
  auto out = s.path("x.pt");
  auto ex = s.cli("export " + dir + " " + out);
  check_one_line_error(ex);
  CHECK(ex.err.find("corrupt_metadata") != std::string::npos);
  CHECK(ex.err.find("key 'w' maps to ('w',), which holds the values of "
                    "other keys (e.g. 'opt.step')")
        != std::string::npos);
  CHECK(!fs::exists(out));
  // --flat ignores the mapping.
  CHECK(s.cli("export --flat " + dir + " " + out).code == 0);
}

TEST_CASE("export then import round-trips a checkpoint") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto pt = s.path("out.pt");
  REQUIRE(s.cli("export " + dir + " " + pt).code == 0);
  auto dir2 = s.path("ckpt2");
  auto r = s.cli("import " + pt + " " + dir2);
  INFO(r.err);
  REQUIRE(r.code == 0);
  loaded l;
  load_all(dir2, l);
  CHECK(
    at::equal(tensor_at(l, "w"), at::arange(12, at::kFloat).reshape({3, 4})));
  CHECK(at::equal(tensor_at(l, "big"), at::arange(4096, at::kFloat)));
  CHECK(*bytes_at(l, "opt.step").to_int() == 7);
  CHECK(*bytes_at(l, "opt.name").to_string() == "hello");
  auto a = nlohmann::json::parse(s.cli("inspect --json " + dir).out);
  auto b = nlohmann::json::parse(s.cli("inspect --json " + dir2).out);
  for (auto key : {"w", "big"})
    CHECK(a["items"][key]["shape"] == b["items"][key]["shape"]);
}

TEST_CASE("verify accepts good checkpoints and names a flipped byte") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto ok = s.cli("verify " + dir);
  INFO(ok.out << ok.err);
  CHECK(ok.code == 0);
  CHECK(ok.out.find("4 items, 0 broken") != std::string::npos);
  CHECK(ok.out.find("4 checksums checked") != std::string::npos);
  auto fx = s.cli("verify " + fixture_113());
  CHECK(fx.code == 0);
  CHECK(fx.out.find("items without checksum") != std::string::npos);
  // Flip one byte in the middle of `big`'s data.
  auto md = read_md(dir);
  auto& si = md.storage_data.at(metadata_index{"big", shape_t{0}});
  auto file = fs::path{dir} / si.relative_path;
  auto data = slurp(file);
  auto pos = si.offset + si.length / 2;
  data[pos] = static_cast<char>(data[pos] ^ 0x40);
  spit(file, data);
  auto bad = s.cli("verify " + dir);
  INFO(bad.out);
  CHECK(bad.code == 1);
  CHECK(bad.out.find("BROKEN big chunk [0] file " + si.relative_path)
        != std::string::npos);
  CHECK(bad.out.find("checksum_mismatch") != std::string::npos);
  CHECK(bad.out.find("1 broken") != std::string::npos);
}

TEST_CASE("a truncated data file is reported") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto md = read_md(dir);
  auto& si = md.storage_data.at(metadata_index{"big", shape_t{0}});
  auto file = fs::path{dir} / si.relative_path;
  fs::resize_file(file, si.offset + si.length - 100);
  auto bad = s.cli("verify " + dir);
  INFO(bad.out);
  CHECK(bad.code == 1);
  CHECK(bad.out.find("BROKEN big") != std::string::npos);
  check_one_line_error(s.cli("export " + dir + " " + s.path("x.pt")));
  CHECK(!fs::exists(s.path("x.pt")));
}

TEST_CASE("latest finds the newest committed step; prune keeps the last K") {
  scratch s;
  auto root = s.path("root");
  // No root yet: nothing committed.
  check_one_line_error(s.cli("latest " + root));
  write_checkpoint(root + "/step_000000100");
  write_checkpoint(root + "/step_000000200");
  write_checkpoint(root + "/step_000000300");
  // An aborted save: data but no `.metadata`, newer than every commit.
  fs::create_directories(root + "/step_000000400");
  spit(root + "/step_000000400/__0_0.distcp", "partial");
  auto latest = s.cli("latest " + root);
  INFO(latest.out << latest.err);
  CHECK(latest.code == 0);
  CHECK(latest.out == root + "/step_000000300\n");
  auto step = s.cli("latest --step " + root);
  CHECK(step.out == "300\n");
  // The step found loads.
  loaded l;
  load_all(root + "/step_000000300", l);
  CHECK(
    at::equal(tensor_at(l, "w"), at::arange(12, at::kFloat).reshape({3, 4})));
  auto pruned = s.cli("prune " + root + " --keep 2");
  INFO(pruned.out << pruned.err);
  CHECK(pruned.code == 0);
  CHECK(pruned.out.find("removed " + root + "/step_000000100")
        != std::string::npos);
  CHECK(!fs::exists(root + "/step_000000100"));
  CHECK(fs::exists(root + "/step_000000200/.metadata"));
  CHECK(fs::exists(root + "/step_000000400")); // may be a save in flight
  check_one_line_error(s.cli("prune " + root + " --keep 0"), 2);
  CHECK(s.cli("latest --step " + root).out == "300\n");
}

TEST_CASE("latest and prune pass over a step whose .metadata is truncated") {
  scratch s;
  auto root = s.path("root");
  write_checkpoint(root + "/step_000000100");
  write_checkpoint(root + "/step_000000200");
  write_checkpoint(root + "/step_000000300");
  auto newest = fs::path{root} / "step_000000300" / ".metadata";
  auto good_md = slurp(newest);
  spit(newest, good_md.substr(0, good_md.size() / 2));
  auto latest = s.cli("latest " + root);
  INFO(latest.out << latest.err);
  CHECK(latest.code == 0);
  CHECK(latest.out == root + "/step_000000200\n");
  CHECK(latest.err.find("step_000000300") != std::string::npos);
  // Out of range KEEP: a usage error naming the option; nothing removed.
  for (auto bad : {"-1", "0", "-9223372036854775808", "10000000000"}) {
    auto r = s.cli("prune " + root + " --keep " + bad);
    check_one_line_error(r, 2);
    CHECK(r.err.find("--keep") != std::string::npos);
  }
  CHECK(fs::exists(root + "/step_000000100/.metadata"));
  // keep 1: the newest loadable step stays, the broken one is left alone
  // and named, the older good one goes.
  auto pruned = s.cli("prune " + root + " --keep 1");
  INFO(pruned.out << pruned.err);
  CHECK(pruned.code == 0);
  CHECK(pruned.out == "removed " + root + "/step_000000100\n");
  CHECK(pruned.err.find("step_000000300") != std::string::npos);
  CHECK(fs::exists(root + "/step_000000300/.metadata"));
  CHECK(s.cli("latest --step " + root).out == "200\n");
  loaded l;
  load_all(root + "/step_000000200", l);
  CHECK(
    at::equal(tensor_at(l, "w"), at::arange(12, at::kFloat).reshape({3, 4})));
}

TEST_CASE("bad inputs end in one line and exit code 1") {
  scratch s;
  auto missing = s.path("nope");
  for (auto cmd : {"inspect ", "verify ", "inspect --json "})
    check_one_line_error(s.cli(cmd + missing));
  check_one_line_error(s.cli("export " + missing + " " + s.path("x.pt")));
  // A truncated `.metadata`.
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto mdfile = fs::path{dir} / ".metadata";
  auto good_md = slurp(mdfile);
  spit(mdfile, good_md.substr(0, good_md.size() / 2));
  for (auto cmd : {"inspect ", "verify "})
    check_one_line_error(s.cli(cmd + dir));
  check_one_line_error(s.cli("export " + dir + " " + s.path("x.pt")));
  // Garbage instead of a pickle.
  spit(mdfile, "this is not a pickle at all");
  check_one_line_error(s.cli("inspect " + dir));
  // A relative path that leaves the directory.
  auto md = decode_metadata(good_md);
  REQUIRE(md);
  for (auto& [idx, si] : md->storage_data)
    si.relative_path = "../" + si.relative_path;
  spit(mdfile, encode_metadata(*md));
  check_one_line_error(s.cli("export " + dir + " " + s.path("x.pt")));
  auto v = s.cli("verify " + dir);
  CHECK(v.code == 1);
  CHECK(v.out.find("path_escape") != std::string::npos);
  // Unreadable and garbage .pt files.
  check_one_line_error(
    s.cli("import " + s.path("none.pt") + " " + s.path("c1")));
  spit(s.path("garbage.pt"), std::string(1000, 'x'));
  check_one_line_error(
    s.cli("import " + s.path("garbage.pt") + " " + s.path("c2")));
  spit(s.path("empty.pt"), "");
  check_one_line_error(
    s.cli("import " + s.path("empty.pt") + " " + s.path("c3")));
  CHECK(!fs::exists(fs::path{s.path("c2")} / ".metadata"));
}

TEST_CASE("a file where a checkpoint directory is expected is named as one") {
  scratch s;
  auto file = s.path("plain.txt");
  spit(file, "not a checkpoint");
  for (auto cmd : {"inspect ", "verify "}) {
    auto r = s.cli(cmd + file);
    check_one_line_error(r);
    CHECK(r.err.find("is a file, not a checkpoint directory")
          != std::string::npos);
    CHECK(r.err.find("no such directory") == std::string::npos);
  }
}

TEST_CASE("usage errors exit with code 2") {
  scratch s;
  check_one_line_error(s.cli(""), 2);
  check_one_line_error(s.cli("frobnicate"), 2);
  check_one_line_error(s.cli("export onlyone"), 2);
  check_one_line_error(s.cli("import --flavor 3 a b"), 2);
  auto help = s.cli("export --help");
  CHECK(help.code == 0);
  CHECK(help.out.find("flattened") != std::string::npos);
}

TEST_CASE("a mistyped subcommand gets a suggestion") {
  scratch s;
  auto r = s.cli("inpsect x");
  check_one_line_error(r, 2);
  CHECK(r.err.find("unknown subcommand 'inpsect'; did you mean 'inspect'?")
        != std::string::npos);
  auto far = s.cli("zzzzzzzz");
  check_one_line_error(far, 2);
  CHECK(far.err.find("unknown subcommand 'zzzzzzzz'") != std::string::npos);
  CHECK(far.err.find("did you mean") == std::string::npos);
}

TEST_CASE("every program exits 2 on an unknown option and 0 on --help") {
  scratch s;
  for (const char* bin :
       {DCPP_CLI, DCPP_WORKER, DCPP_LAUNCH, DCPP_COORDINATOR_BIN, DCPP_SOAK,
        DCPP_BENCH, DCPP_DEMO}) {
    INFO(bin);
    auto bogus = s.program(bin, "--bogus");
    INFO("stderr: " << bogus.err);
    CHECK(bogus.code == 2);
    CHECK(std::count(bogus.err.begin(), bogus.err.end(), '\n') == 1);
    auto help = s.program(bin, "--help");
    CHECK(help.code == 0);
    // Defaults, the log level and the exit codes are in every --help.
    CHECK(help.out.find("--log-level") != std::string::npos);
    CHECK(help.out.find("SPDLOG_LEVEL") != std::string::npos);
    CHECK(help.out.find("Exit codes: 0 ok, 1") != std::string::npos);
  }
  // ... and the environment variables a program reads.
  auto worker = s.program(DCPP_WORKER, "--help");
  for (const char* var : {"DCPP_SECRET", "DCPP_JOB_ID", "DCPP_FAULT",
                          "DCPP_COORDINATOR", "MASTER_ADDR"})
    CHECK(worker.out.find(var) != std::string::npos);
  CHECK(worker.out.find("--peer-timeout-ms INT=5000") != std::string::npos);
  auto launch = s.program(DCPP_LAUNCH, "--help");
  CHECK(launch.out.find("DCPP_SECRET") != std::string::npos);
  auto coord = s.program(DCPP_COORDINATOR_BIN, "--help");
  CHECK(coord.out.find("DCPP_SECRET") != std::string::npos);
}

TEST_CASE("verify --json reports counts and every broken item") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto ok = s.cli("verify --json " + dir);
  INFO(ok.out << ok.err);
  CHECK(ok.code == 0);
  auto j = nlohmann::json::parse(ok.out);
  CHECK(j["ok"] == true);
  CHECK(j["items"] == 4);
  CHECK(j["broken"] == 0);
  CHECK(j["checksums_checked"] == 4);
  CHECK(j["problems"].empty());
  auto file = fs::path{dir}
              / read_md(dir)
                  .storage_data.at(metadata_index{"big", shape_t{0}})
                  .relative_path;
  fs::resize_file(file, fs::file_size(file) / 2);
  auto bad = s.cli("verify --json " + dir);
  INFO(bad.out << bad.err);
  CHECK(bad.code == 1);
  auto b = nlohmann::json::parse(bad.out);
  CHECK(b["ok"] == false);
  REQUIRE(b["problems"].size() >= 1);
  bool names_big = false;
  for (const auto& p : b["problems"])
    names_big = names_big || p["key"] == "big";
  CHECK(names_big);
}

// -- hostile directories (issue 11) -------------------------------------------

namespace {

/// Saves `w` (float32, size 4, values 1..4) as two chunks, then rewrites
/// `.metadata` so that the second chunk starts at 1 instead of 2: the
/// chunks overlap at element 1 and leave element 3 uncovered, while their
/// sizes still add up to 4.
void write_overlapping_chunks_with_gap(const std::string& dir) {
  state_dict sd;
  sharded_tensor st;
  st.global_size = {4};
  auto full = at::arange(1, 5, at::kFloat);
  st.local_shards.push_back({full.narrow(0, 0, 2).clone(), {0}});
  st.local_shards.push_back({full.narrow(0, 2, 2).clone(), {2}});
  sd.set("w", st);
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{make_filesystem_writer(dir), make_filesystem_reader(dir),
                  opts};
  REQUIRE(cp.save(sd));
  auto md = read_md(dir);
  auto& chunks = md.state_dict_metadata.at("w").tensor.chunks;
  REQUIRE(chunks.size() == 2);
  for (auto& c : chunks)
    if (c.offsets == shape_t{2})
      c.offsets = shape_t{1};
  auto node = md.storage_data.extract(metadata_index{"w", shape_t{2}});
  REQUIRE(!node.empty());
  md.storage_data.emplace(metadata_index{"w", shape_t{1}},
                          std::move(node.mapped()));
  spit(fs::path{dir} / ".metadata", encode_metadata(md));
}

/// The data file that holds `big` (relative path).
std::string big_file(const std::string& dir) {
  return read_md(dir)
    .storage_data.at(metadata_index{"big", shape_t{0}})
    .relative_path;
}

} // namespace

TEST_CASE("overlapping chunks with a gap fail load and export naming the key",
          "[issue11]") {
  scratch s;
  auto dir = s.path("ckpt");
  write_overlapping_chunks_with_gap(dir);
  auto ex = s.cli("export " + dir + " " + s.path("x.pt"));
  check_one_line_error(ex);
  CHECK(ex.err.find("overlapping_chunks") != std::string::npos);
  CHECK(!fs::exists(s.path("x.pt")));
  state_dict dest;
  dest.set("w", at::full({4}, -1.0f));
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{make_filesystem_writer(dir), make_filesystem_reader(dir),
                  opts};
  auto err = cp.load(dest);
  INFO(describe(err));
  REQUIRE(err);
  CHECK(describe(err).find("overlapping_chunks") != std::string::npos);
  CHECK(describe(err).find("w: chunk #") != std::string::npos);
}

TEST_CASE("verify and export refuse a symlinked data file, naming it",
          "[issue11]") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto name = big_file(dir);
  // The same bytes outside the directory: checksums still match.
  auto outside = s.path("outside.bin");
  fs::rename(fs::path{dir} / name, outside);
  fs::create_symlink(outside, fs::path{dir} / name);
  auto v = s.cli("verify " + dir);
  INFO(v.out << v.err);
  CHECK(v.code == 1);
  CHECK(v.out.find("BROKEN big") != std::string::npos);
  CHECK(v.out.find(name + ": is a symbolic link") != std::string::npos);
  auto ex = s.cli("export " + dir + " " + s.path("x.pt"));
  check_one_line_error(ex);
  CHECK(ex.err.find(name + ": is a symbolic link") != std::string::npos);
  CHECK(!fs::exists(s.path("x.pt")));
}

TEST_CASE("export does not write through a planted OUT.tmp symlink",
          "[issue11]") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto victim = s.path("victim.txt");
  spit(victim, "precious");
  auto out = s.path("x.pt");
  fs::create_symlink(victim, out + ".tmp");
  auto ex = s.cli("export " + dir + " " + out);
  INFO(ex.out << ex.err);
  CHECK(ex.code == 0);
  CHECK(slurp(victim) == "precious");
  CHECK(fs::is_regular_file(fs::symlink_status(out)));
  CHECK(!fs::exists(fs::symlink_status(out + ".tmp")));
}

TEST_CASE("verify of a FIFO as a data file fails at once, naming it",
          "[issue11]") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto name = big_file(dir);
  auto path = fs::path{dir} / name;
  fs::remove(path);
  REQUIRE(::mkfifo(path.c_str(), 0644) == 0);
  // `timeout` turns a verify that blocks in open() into exit code 124.
  auto out = s.root / "verify.out";
  cli_result v;
  v.code = run_shell("timeout 20 " + std::string{DCPP_CLI} + " verify " + dir
                     + " >" + out.string() + " 2>&1");
  v.out = slurp(out);
  INFO(v.out << v.err);
  CHECK(v.code == 1);
  CHECK(v.out.find(name + ": is a FIFO") != std::string::npos);
}

TEST_CASE("global flags work after the subcommand too") {
  // (Before, a flag after the subcommand ended in a usage error, exit 2.)
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  for (auto args :
       {"verify " + dir + " -v", "-v verify " + dir,
        "verify " + dir + " --log-level debug", "inspect " + dir + " -vv"}) {
    auto r = s.cli(args);
    INFO(args << "\n" << r.out << r.err);
    CHECK(r.code == 0);
    bool reported = r.out.find("4 items, 0 broken") != std::string::npos
                    || r.out.find("keys: 4") != std::string::npos;
    CHECK(reported);
  }
  auto unknown = s.cli("verify " + dir + " --no-such-flag");
  CHECK(unknown.code == 2);
  CHECK(unknown.err.find("--no-such-flag") != std::string::npos);
}

TEST_CASE("a level SPDLOG_LEVEL does not know is named in a warning") {
  scratch s;
  auto dir = s.path("ckpt");
  write_checkpoint(dir);
  auto r = s.program("SPDLOG_LEVEL=verbose " DCPP_CLI, "verify " + dir);
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(r.err.find("SPDLOG_LEVEL: 'verbose' is not a log level")
        != std::string::npos);
  auto ok = s.program("SPDLOG_LEVEL=info,dcpp=debug " DCPP_CLI,
                      "verify " + dir);
  CHECK(ok.code == 0);
  CHECK(ok.err.find("not a log level") == std::string::npos);
}
