// Paths a hostile or careless operator plants where dcpp writes or looks
// for steps, each refused with an error naming the path, and nothing
// outside the checkpoint changed (every file of the bystander hashed, so
// "unchanged" means byte for byte):
//
// - a checkpoint manager's step directory that is a symbolic link to
//   another run's committed step: the save fails naming the link, the
//   other run's step is untouched and still loads;
// - `dcpp export` to a symbolic link, a FIFO, a character device, or a
//   path inside the checkpoint being read (`dcpp export ck ck/.metadata`):
//   refused, the target and the checkpoint unchanged;
// - a planted far-future step (a copy of a real step under the name
//   `step_999999999999`) and an unrepresentable one
//   (`step_18446744073709551615`): the training example does not restore
//   them, trains, and leaves them in place; an explicit restore names them;
// - `dcpp prune` of a missing root fails naming it, as `dcpp latest` does.

#include "actors/checkpoint_manager.hpp"
#include "actors/checkpointer.hpp"
#include "core/error.hpp"
#include "storage/checkpoint_root.hpp"
#include "storage/filesystem.hpp"
#include "storage/filesystem_layout.hpp"
#include "storage/state_dict.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

namespace fs = std::filesystem;
using namespace dcpp;
using fs_test::temp_dir;

namespace {

/// Every entry under `dir` (links not followed): relative path -> its
/// kind and content ("file:<bytes>", "link:<target>", "dir", "other").
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (auto it = fs::recursive_directory_iterator{dir};
       it != fs::recursive_directory_iterator{}; ++it) {
    auto rel = fs::relative(it->path(), dir).string();
    auto st = it->symlink_status();
    if (fs::is_symlink(st))
      out[rel] = "link:" + fs::read_symlink(it->path()).string();
    else if (fs::is_regular_file(st))
      out[rel] = "file:" + fs_test::read_file(it->path().string());
    else if (fs::is_directory(st))
      out[rel] = "dir";
    else
      out[rel] = "other";
  }
  return out;
}

state_dict state_of(uint64_t step) {
  state_dict sd;
  sd.set("w", at::full({3, 2}, static_cast<double>(step), at::kFloat));
  sd.nested("optim").set("step", bytes_value::from_int(int64_t(step)));
  return sd;
}

checkpoint_manager_options solo() {
  checkpoint_manager_options o;
  o.checkpointer.no_dist = true;
  return o;
}

/// Loads a checkpoint directory whole (the check that it still loads).
caf::error load_dir(const std::string& dir) {
  auto md = detail::read_metadata_file(dir);
  if (!md)
    return std::move(md.error());
  auto sd = make_state_dict_for(*md);
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{nullptr, make_filesystem_reader(dir), opts};
  return cp.load(sd);
}

fs_test::command_result cli(const std::string& args) {
  return fs_test::run_command(std::string{DCPP_CLI} + " " + args);
}

void write_checkpoint(const std::string& dir) {
  state_dict sd;
  sd.set("w", at::arange(12, at::kFloat).reshape({3, 4}));
  sd.nested("opt").set("step", bytes_value::from_int(7));
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{make_filesystem_writer(dir), nullptr, opts};
  REQUIRE(cp.save(sd));
}

} // namespace

TEST_CASE("a step directory planted as a link to another run's committed "
          "step is refused; the other run stays byte for byte") {
  temp_dir tmp;
  auto other = tmp / "other";
  auto root = tmp / "root";
  {
    checkpoint_manager mgr{other, solo()};
    REQUIRE(fs_test::why(mgr.save(100, state_of(100))) == "");
  }
  auto before = snapshot(other);
  for (bool async : {false, true}) {
    INFO("async " << async);
    auto o = solo();
    o.async = async;
    checkpoint_manager mgr{root, o};
    auto first = async ? 20u : 10u;
    REQUIRE(fs_test::why(mgr.save(first, state_of(first))) == "");
    REQUIRE(fs_test::why(mgr.wait_until_finished()) == "");
    auto link = step_directory(root, first + 25);
    fs::create_symlink(step_directory(other, 100), link);
    auto err = mgr.save(first + 25, state_of(first + 25));
    if (!err)
      err = mgr.wait_until_finished();
    INFO(describe(err));
    REQUIRE(err);
    CHECK(describe(err).find("path_escape") != std::string::npos);
    CHECK(describe(err).find(link + ": is a symbolic link")
          != std::string::npos);
    // The link is left as it was; the run's own step still restores.
    CHECK(fs::is_symlink(link));
    auto sd = state_of(0);
    auto step = mgr.restore(std::nullopt, sd);
    REQUIRE(fs_test::why(step) == "");
    CHECK(*step == first);
    // An explicit restore of the link is refused, naming it.
    auto linked = mgr.restore(first + 25, sd);
    REQUIRE(!linked);
    CHECK(describe(linked.error()).find(link) != std::string::npos);
  }
  CHECK(snapshot(other) == before);
  auto latest = latest_committed_step(other);
  REQUIRE(fs_test::why(latest) == "");
  CHECK(*latest == 100);
  CHECK(fs_test::why(load_dir(step_directory(other, 100))) == "");
  auto verify = cli("verify " + step_directory(other, 100));
  INFO(verify.output);
  CHECK(verify.status == 0);
}

TEST_CASE("export refuses a link, a FIFO, a device or a path inside the "
          "checkpoint as its output, changing nothing") {
  temp_dir tmp;
  auto ck = tmp / "ck";
  write_checkpoint(ck);
  auto sentinel = tmp / "sentinel";
  fs::create_directories(sentinel);
  fs_test::write_file(sentinel + "/precious", "precious");
  auto ck_before = snapshot(ck);
  auto sentinel_before = snapshot(sentinel);
  auto refused = [&](const std::string& out, const std::string& why) {
    INFO("export to " << out);
    auto r = cli("export " + ck + " " + out);
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find(why) != std::string::npos);
    CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  };
  for (std::string ext : {".pt", ".safetensors"}) {
    SECTION("a symbolic link to another file" + ext) {
      auto out = tmp / ("out" + ext);
      fs::create_symlink(sentinel + "/precious", out);
      refused(out, out + ": is a symbolic link; refusing to replace it");
      CHECK(fs::is_symlink(out));
    }
    SECTION("a FIFO" + ext) {
      auto out = tmp / ("fifo" + ext);
      REQUIRE(::mkfifo(out.c_str(), 0644) == 0);
      refused(out, out + ": is a FIFO; refusing to replace it");
      CHECK(fs::is_fifo(fs::symlink_status(out)));
    }
    SECTION("a character device" + ext) {
      auto out = tmp / ("null" + ext);
      if (::mknod(out.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) {
        WARN("SKIP: cannot make a character device here (mknod needs "
             "privileges): "
             << std::strerror(errno));
        return;
      }
      refused(out, out + ": is a character device; refusing to replace it");
      CHECK(fs::is_character_file(fs::symlink_status(out)));
    }
    SECTION("the checkpoint's own .metadata" + ext) {
      // `.metadata` itself for .pt; a new file beside it for .safetensors.
      auto out = ext == ".pt" ? ck + "/.metadata" : ck + "/x" + ext;
      refused(out, out + ": is inside the checkpoint " + ck + " being read");
    }
    SECTION("a path inside the checkpoint through a link" + ext) {
      auto alias = tmp / "alias";
      fs::create_symlink(ck, alias);
      auto out = alias + "/sub/y" + ext;
      refused(out, "is inside the checkpoint " + ck + " being read");
      CHECK(!fs::exists(ck + "/sub"));
    }
  }
  CHECK(snapshot(ck) == ck_before);
  CHECK(snapshot(sentinel) == sentinel_before);
  auto verify = cli("verify " + ck);
  INFO(verify.output);
  CHECK(verify.status == 0);
  // A plain file is still replaced, as before.
  auto plain = tmp / "plain.pt";
  fs_test::write_file(plain, "old");
  auto ok = cli("export " + ck + " " + plain);
  INFO(ok.output);
  CHECK(ok.status == 0);
  CHECK(fs_test::read_file(plain) != "old");
}

TEST_CASE("a planted far-future or unrepresentable step is not restored as "
          "the latest; training goes on and leaves it in place") {
  temp_dir tmp;
  auto root = tmp / "root";
  auto train = [&](int steps) {
    return fs_test::run_command(
      "timeout -k 5 120 " + std::string{DCPP_LAUNCH} + " --nproc 1 -- "
      + DCPP_TRAIN_EXAMPLE + " --root " + root + " --steps "
      + std::to_string(steps) + " --save-every 10 --keep 2");
  };
  auto first = train(30);
  INFO(first.output);
  REQUIRE(first.status == 0);
  auto far = root + "/step_999999999999";
  auto huge = root + "/step_18446744073709551615";
  fs::copy(step_directory(root, 30), far, fs::copy_options::recursive);
  fs::copy(step_directory(root, 30), huge, fs::copy_options::recursive);
  auto far_before = snapshot(far);
  auto huge_before = snapshot(huge);

  auto latest = cli("latest --step " + root);
  INFO(latest.output);
  CHECK(latest.status == 0);
  CHECK(latest.output.find("30\n") != std::string::npos);
  CHECK(latest.output.find(far) != std::string::npos);
  CHECK(latest.output.find(huge + ": step number out of range")
        != std::string::npos);

  auto second = train(40);
  INFO(second.output);
  CHECK(second.status == 0);
  CHECK(second.output.find("trained steps 31..40") != std::string::npos);
  CHECK(second.output.find("passed over " + far) != std::string::npos);
  auto now = latest_committed_step(root);
  REQUIRE(fs_test::why(now) == "");
  CHECK(*now == 40);
  CHECK(snapshot(far) == far_before);
  CHECK(snapshot(huge) == huge_before);

  // Asked for explicitly: an error naming the directory and why.
  checkpoint_manager mgr{root, solo()};
  auto sd = state_of(0);
  auto copy = mgr.restore(999999999999u, sd);
  REQUIRE(!copy);
  CHECK(describe(copy.error()).find(far) != std::string::npos);
  CHECK(describe(copy.error()).find("a copy or rename of another step")
        != std::string::npos);
  auto wrap = mgr.restore(UINT64_MAX, sd);
  REQUIRE(!wrap);
  CHECK(describe(wrap.error()).find(huge + ": step number out of range")
        != std::string::npos);
  auto beyond = mgr.save(UINT64_MAX, state_of(1));
  REQUIRE(beyond);
  CHECK(describe(beyond).find("beyond the largest step") != std::string::npos);
}

TEST_CASE("prune of a missing root fails naming it, as latest does") {
  temp_dir tmp;
  auto missing = tmp / "missing";
  auto latest = cli("latest " + missing);
  auto prune = cli("prune " + missing + " --keep 1");
  INFO(latest.output << "\n" << prune.output);
  CHECK(latest.status == 1);
  CHECK(prune.status == 1);
  CHECK(prune.output.rfind("dcpp: prune: ", 0) == 0);
  CHECK(prune.output.find(missing) != std::string::npos);
  CHECK(!fs::exists(missing));
}
