#include "storage/checkpoint_root.hpp"

#include "core/error.hpp"
#include "storage/metadata_codec.hpp"
#include "tests/storage_format/test_data.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

using namespace dcpp;

namespace fs = std::filesystem;

namespace {

/// A valid commit record: one bytes item, the 4 bytes of `__0_0.distcp`.
std::string good_metadata() {
  metadata md;
  md.state_dict_metadata["x"] = item_metadata::bytes();
  md.storage_data[metadata_index{"x"}] = storage_info{"__0_0.distcp", 0, 4, ""};
  return encode_metadata(md);
}

/// A checkpoint root in a fresh temporary directory.
struct root_fixture {
  test::temp_dir tmp;
  std::string root = tmp.path().string();

  std::string path(const std::string& name) const {
    return (tmp.path() / name).string();
  }

  /// A step directory with a data file and, if `committed`, a `.metadata`
  /// that names it.
  std::string add_step(const std::string& name, bool committed) {
    auto dir = path(name);
    fs::create_directories(dir);
    test::write_file(dir + "/__0_0.distcp", "data");
    if (committed)
      test::write_file(dir + "/.metadata", good_metadata());
    return dir;
  }

  std::string add_step(uint64_t step, bool committed) {
    return add_step(step_name(step), committed);
  }

  bool exists(const std::string& name) const {
    std::error_code ec;
    return fs::exists(fs::symlink_status(path(name), ec));
  }

  /// Names of everything in the root, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    for (const auto& entry : fs::directory_iterator{tmp.path()})
      result.push_back(entry.path().filename().string());
    std::sort(result.begin(), result.end());
    return result;
  }
};

std::vector<uint64_t> steps_of(const std::string& root) {
  auto steps = committed_steps(root);
  REQUIRE(steps);
  return *steps;
}

std::vector<std::string> sorted(std::vector<std::string> xs) {
  std::sort(xs.begin(), xs.end());
  return xs;
}

} // namespace

TEST_CASE("step directory names are zero-padded to nine digits",
          "[checkpoint_root]") {
  CHECK(step_name(0) == "step_000000000");
  CHECK(step_name(100) == "step_000000100");
  CHECK(step_name(999999999) == "step_999999999");
  CHECK(step_name(1000000000) == "step_1000000000");
  CHECK(step_name(UINT64_MAX) == "step_18446744073709551615");
  CHECK(step_directory("/ckpt", 100) == "/ckpt/step_000000100");
  CHECK(step_directory("/ckpt/", 100) == "/ckpt/step_000000100");
  CHECK(step_directory("rel", 7) == "rel/step_000000007");
}

TEST_CASE("step names parse with any number of digits", "[checkpoint_root]") {
  CHECK(parse_step_name("step_7") == 7u);
  CHECK(parse_step_name("step_000000100") == 100u);
  CHECK(parse_step_name("step_0") == 0u);
  CHECK(parse_step_name("step_00000000000000000000000000042") == 42u);
  CHECK(parse_step_name("step_18446744073709551615") == UINT64_MAX);
  for (const char* bad :
       {"step_", "step_abc", "step_12a", "step_-1", "step_+1", "step_ 1",
        "Step_1", "step-1", "step1", ".trash-step_000000001", "step_1/",
        "step_0x10", "step_18446744073709551616", "step_99999999999999999999",
        ""}) {
    INFO(bad);
    CHECK(!parse_step_name(bad));
  }
  for (uint64_t step : {uint64_t{0}, uint64_t{1}, uint64_t{123456789},
                        uint64_t{1} << 40, UINT64_MAX - 1, UINT64_MAX})
    CHECK(parse_step_name(step_name(step)) == step);
}

TEST_CASE("a step is committed by a regular .metadata that validates",
          "[checkpoint_root]") {
  root_fixture f;
  CHECK(is_committed(f.add_step(1, true)));
  CHECK(!is_committed(f.add_step(2, false)));
  auto empty = f.add_step(3, false);
  test::write_file(empty + "/.metadata", "");
  CHECK(!is_committed(empty));
  auto dir_md = f.add_step(4, false);
  fs::create_directory(dir_md + "/.metadata");
  CHECK(!is_committed(dir_md));
  auto link_md = f.add_step(5, false);
  fs::create_symlink(f.path(step_name(1)) + "/.metadata",
                     link_md + "/.metadata");
  CHECK(!is_committed(link_md));
  CHECK(!is_committed(f.path("missing")));
  // No commit record at all is not_found, not broken.
  for (auto dir : {f.path(step_name(2)), empty, dir_md, link_md})
    CHECK(code_of(check_committed(dir)) == errc::not_found);
}

TEST_CASE("committed steps ignore garbage, files, links and saves in flight",
          "[checkpoint_root]") {
  root_fixture f;
  f.add_step(300, true);
  f.add_step("step_99", true);            // fewer digits: still step 99
  f.add_step("step_0000000000100", true); // more digits: step 100
  f.add_step(400, false);                 // in flight
  f.add_step("step_abc", true);
  f.add_step("checkpoint_500", true);
  f.add_step(".trash-step_000000600", true);
  test::write_file(f.path(step_name(700)), "a file named like a step");
  fs::create_symlink(f.path(step_name(300)), f.path(step_name(800)));
  fs::create_symlink("/nonexistent", f.path(step_name(900)));
  CHECK(steps_of(f.root) == std::vector<uint64_t>{99, 100, 300});
  auto latest = latest_committed(f.root);
  REQUIRE(latest);
  CHECK(latest->step == 300);
  CHECK(latest->path == f.path(step_name(300)));
  CHECK(latest->committed);
  CHECK(latest_committed_step(f.root) == 300u);
  auto all = list_steps(f.root);
  REQUIRE(all);
  REQUIRE(all->size() == 4);
  CHECK((*all)[0].path == f.path("step_99"));
  CHECK((*all)[3].step == 400);
  CHECK(!(*all)[3].committed);
}

TEST_CASE("the same step spelled twice is listed once", "[checkpoint_root]") {
  root_fixture f;
  f.add_step("step_7", true);
  f.add_step(7, true);
  CHECK(steps_of(f.root) == std::vector<uint64_t>{7});
  auto all = list_steps(f.root);
  REQUIRE(all);
  CHECK(all->size() == 2);
}

TEST_CASE("no committed step is not_found naming the root",
          "[checkpoint_root]") {
  root_fixture f;
  SECTION("empty root") {
    CHECK(steps_of(f.root).empty());
  }
  SECTION("only saves in flight") {
    f.add_step(1, false);
    CHECK(steps_of(f.root).empty());
  }
  SECTION("missing root") {
    f.root += "/missing";
    CHECK(steps_of(f.root).empty());
  }
  auto latest = latest_committed_step(f.root);
  REQUIRE(!latest);
  CHECK(code_of(latest.error()) == errc::not_found);
  CHECK(context_of(latest.error()).find(f.root) != std::string::npos);
}

TEST_CASE("a root that is not a directory is an io_error",
          "[checkpoint_root]") {
  root_fixture f;
  test::write_file(f.path("file"), "x");
  auto steps = committed_steps(f.path("file"));
  REQUIRE(!steps);
  CHECK(code_of(steps.error()) == errc::io_error);
  CHECK(context_of(steps.error()).find(f.path("file")) != std::string::npos);
  auto pruned = prune(f.path("file"), 1);
  REQUIRE(!pruned);
  CHECK(code_of(pruned.error()) == errc::io_error);
}

TEST_CASE("prune refuses to keep nothing", "[checkpoint_root]") {
  root_fixture f;
  f.add_step(1, true);
  auto pruned = prune(f.root, 0);
  REQUIRE(!pruned);
  CHECK(code_of(pruned.error()) == errc::invalid_argument);
  CHECK(f.exists(step_name(1)));
}

TEST_CASE("prune keeps the newest K and saves in flight", "[checkpoint_root]") {
  root_fixture f;
  for (uint64_t step : {100, 200, 300, 400, 500})
    f.add_step(step, true);
  f.add_step(150, false); // aborted save: older than the newest commit
  f.add_step(600, false); // save in flight: newer than the newest commit
  f.add_step("step_abc", true);
  test::write_file(f.path(step_name(50)), "a file named like a step");
  // A link to a victim: the link stays and so does what it points to
  // (through its own name, it is not a step).
  fs::create_directory(f.path("elsewhere"));
  test::write_file(f.path("elsewhere") + "/.metadata", "md");
  fs::create_directory_symlink(f.path("elsewhere"), f.path(step_name(10)));
  auto pruned = prune(f.root, 2);
  REQUIRE(pruned);
  CHECK(sorted(*pruned)
        == sorted({f.path(step_name(100)), f.path(step_name(150)),
                   f.path(step_name(200)), f.path(step_name(300))}));
  CHECK(steps_of(f.root) == std::vector<uint64_t>{400, 500});
  CHECK(f.names()
        == std::vector<std::string>{"elsewhere", "step_000000010",
                                    "step_000000050", "step_000000400",
                                    "step_000000500", "step_000000600",
                                    "step_abc"});
  CHECK(fs::exists(f.path("elsewhere") + "/.metadata"));
  // Pruning again removes nothing.
  auto again = prune(f.root, 2);
  REQUIRE(again);
  CHECK(again->empty());
  // keep = 1 leaves only the newest commit (and the save in flight).
  auto last = prune(f.root, 1);
  REQUIRE(last);
  CHECK(*last == std::vector<std::string>{f.path(step_name(400))});
  CHECK(steps_of(f.root) == std::vector<uint64_t>{500});
  CHECK(f.exists(step_name(600)));
}

TEST_CASE("prune_except keeps the chosen steps and always the newest",
          "[checkpoint_root]") {
  root_fixture f;
  for (uint64_t step : {1, 2, 3, 4, 5})
    f.add_step(step, true);
  f.add_step(step_name(7), false); // in flight: newer than the newest commit
  std::vector<uint64_t> seen;
  auto pruned = prune_except(f.root, [&](const std::vector<uint64_t>& steps) {
    seen = steps;
    return std::vector<uint64_t>{4, 2}; // not 5, the newest: it stays
  });
  REQUIRE(pruned);
  CHECK(seen == std::vector<uint64_t>{1, 2, 3, 4, 5});
  CHECK(sorted(*pruned)
        == sorted({f.path(step_name(1)), f.path(step_name(3))}));
  CHECK(steps_of(f.root) == std::vector<uint64_t>{2, 4, 5});
  CHECK(f.exists(step_name(7)));
  // Choosing nothing leaves the newest.
  auto last = prune_except(f.root, [](const std::vector<uint64_t>&) {
    return std::vector<uint64_t>{};
  });
  REQUIRE(last);
  CHECK(steps_of(f.root) == std::vector<uint64_t>{5});
}

TEST_CASE("prune with more to keep than exists removes only aborted saves",
          "[checkpoint_root]") {
  root_fixture f;
  f.add_step(1, false);
  f.add_step(2, true);
  f.add_step(3, true);
  auto pruned = prune(f.root, 100);
  REQUIRE(pruned);
  CHECK(*pruned == std::vector<std::string>{f.path(step_name(1))});
  CHECK(steps_of(f.root) == std::vector<uint64_t>{2, 3});
}

TEST_CASE("prune without any commit removes nothing", "[checkpoint_root]") {
  root_fixture f;
  f.add_step(1, false);
  f.add_step(2, false);
  auto pruned = prune(f.root, 1);
  REQUIRE(pruned);
  CHECK(pruned->empty());
  CHECK(f.exists(step_name(1)));
  CHECK(f.exists(step_name(2)));
  SECTION("a missing root is not_found naming it, as for latest") {
    auto missing = prune(f.root + "/missing", 1);
    REQUIRE(!missing);
    CHECK(code_of(missing.error()) == errc::not_found);
    CHECK(context_of(missing.error()).find(f.root + "/missing")
          != std::string::npos);
  }
}

TEST_CASE("prune orders big step numbers numerically", "[checkpoint_root]") {
  root_fixture f;
  const uint64_t big = max_step;
  f.add_step(big, true);
  f.add_step(big - 1, true);
  f.add_step(1000000000000, true); // 13 digits
  f.add_step(999999999, true);     // 9 digits
  f.add_step("step_5", true);
  // Beyond the largest step (its next step would not fit a training loop's
  // int64 counter), and beyond 64 bits: broken, named, never removed.
  f.add_step(UINT64_MAX, true);
  f.add_step("step_99999999999999999999", true);
  CHECK(steps_of(f.root)
        == std::vector<uint64_t>{5, 999999999, 1000000000000, big - 1, big});
  CHECK(latest_committed_step(f.root) == big);
  std::vector<step_entry> passed;
  REQUIRE(latest_committed(f.root, &passed));
  REQUIRE(passed.size() == 2);
  for (const auto& entry : passed)
    CHECK(entry.broken.find(entry.path + ": step number out of range")
          != std::string::npos);
  std::vector<step_entry> broken;
  auto pruned = prune(f.root, 2, &broken);
  REQUIRE(pruned);
  CHECK(pruned->size() == 3);
  CHECK(broken.size() == 2);
  CHECK(steps_of(f.root) == std::vector<uint64_t>{big - 1, big});
  CHECK(f.exists(step_name(UINT64_MAX)));
  CHECK(f.exists("step_99999999999999999999"));
}

TEST_CASE("prune cleans the leftovers of a prune that crashed",
          "[checkpoint_root]") {
  root_fixture f;
  f.add_step(1, true);
  f.add_step(2, true);
  // A crash after the rename: a whole victim under its hidden name, one
  // half removed, and a stray file. None of them counts as a commit.
  f.add_step(".trash-step_000000000", true);
  auto half = f.add_step(".trash-step_000000001", false);
  test::write_file(f.path(".trash-x"), "stray");
  CHECK(steps_of(f.root) == std::vector<uint64_t>{1, 2});
  auto pruned = prune(f.root, 1);
  REQUIRE(pruned);
  CHECK(sorted(*pruned)
        == sorted({f.path(".trash-step_000000000"), half, f.path(".trash-x"),
                   f.path(step_name(1))}));
  CHECK(f.names() == std::vector<std::string>{"step_000000002"});
}

TEST_CASE("prune leaves no hidden directory behind", "[checkpoint_root]") {
  root_fixture f;
  for (uint64_t step = 1; step <= 20; ++step) {
    auto dir = f.add_step(step, step % 3 != 0);
    fs::create_directories(dir + "/nested/deeper");
    test::write_file(dir + "/nested/deeper/file", "x");
  }
  auto pruned = prune(f.root, 3);
  REQUIRE(pruned);
  // Committed: all but 3, 6, ..., 18; the newest three are 17, 19, 20.
  CHECK(steps_of(f.root) == std::vector<uint64_t>{17, 19, 20});
  CHECK(f.names()
        == std::vector<std::string>{"step_000000017", "step_000000019",
                                    "step_000000020"});
  CHECK(pruned->size() == 17);
}

TEST_CASE("a newest step whose .metadata does not validate is not latest",
          "[checkpoint_root]") {
  auto md = good_metadata();
  auto bad = GENERATE_COPY(std::string{"truncated"}, std::string{"garbage"},
                           std::string{"missing data file"},
                           std::string{"escaping path"},
                           std::string{"data file too short"});
  INFO(bad);
  root_fixture f;
  f.add_step(100, true);
  f.add_step(200, true);
  auto newest = f.add_step(300, true);
  if (bad == "truncated") {
    test::write_file(newest + "/.metadata", md.substr(0, md.size() / 2));
  } else if (bad == "garbage") {
    test::write_file(newest + "/.metadata", "this is not a pickle at all");
  } else if (bad == "missing data file") {
    fs::remove(newest + "/__0_0.distcp");
  } else if (bad == "escaping path") {
    auto decoded = decode_metadata(md);
    REQUIRE(decoded);
    for (auto& entry : decoded->storage_data)
      entry.second.relative_path = "../" + step_name(200) + "/__0_0.distcp";
    test::write_file(newest + "/.metadata", encode_metadata(*decoded));
  } else {
    test::write_file(newest + "/__0_0.distcp", "da");
  }
  CHECK(!is_committed(newest));
  auto why = check_committed(newest);
  REQUIRE(why);
  CHECK(code_of(why) != errc::not_found);
  CHECK(latest_committed_step(f.root) == 200u);
  CHECK(steps_of(f.root) == std::vector<uint64_t>{100, 200});
  auto all = list_steps(f.root);
  REQUIRE(all);
  REQUIRE(all->size() == 3);
  CHECK(!(*all)[2].committed);
  CHECK((*all)[2].broken == describe(why));
  CHECK((*all)[2].broken.find(newest) != std::string::npos);
  CHECK((*all)[1].broken.empty());
  std::vector<step_entry> passed_over;
  auto latest = latest_committed(f.root, &passed_over);
  REQUIRE(latest);
  CHECK(latest->step == 200);
  REQUIRE(passed_over.size() == 1);
  CHECK(passed_over[0].path == newest);
  // keep = 1 keeps the newest loadable step; the broken one does not count
  // toward KEEP and is left alone, and named.
  std::vector<step_entry> broken;
  auto pruned = prune(f.root, 1, &broken);
  REQUIRE(pruned);
  CHECK(*pruned == std::vector<std::string>{f.path(step_name(100))});
  REQUIRE(broken.size() == 1);
  CHECK(broken[0].path == newest);
  CHECK(f.exists(step_name(200) + "/.metadata"));
  CHECK(f.exists(step_name(300) + "/.metadata"));
  CHECK(latest_committed_step(f.root) == 200u);
}

TEST_CASE("prune leaves a broken step older than the latest alone",
          "[checkpoint_root]") {
  root_fixture f;
  auto broken = f.add_step(100, true);
  test::write_file(broken + "/.metadata", "garbage");
  f.add_step(200, true);
  f.add_step(300, true);
  auto pruned = prune(f.root, 1);
  REQUIRE(pruned);
  CHECK(*pruned == std::vector<std::string>{f.path(step_name(200))});
  CHECK(f.exists(step_name(100) + "/.metadata"));
  CHECK(steps_of(f.root) == std::vector<uint64_t>{300});
}

TEST_CASE("a step whose commit record names another step is not latest, "
          "nor removed; one spelled alike or without a name counts",
          "[checkpoint_root]") {
  root_fixture f;
  auto record_of = [](const std::string& checkpoint_id) {
    auto md = decode_metadata(good_metadata());
    REQUIRE(md);
    md->checkpoint_id = checkpoint_id;
    return encode_metadata(*md);
  };
  auto own = f.add_step(30, false);
  test::write_file(own + "/.metadata", record_of("/elsewhere/step_000000030"));
  auto spelled = f.add_step("step_31", false);
  test::write_file(spelled + "/.metadata", record_of("run/step_000000031/"));
  auto plain = f.add_step(32, false);
  test::write_file(plain + "/.metadata", record_of("/some/export"));
  // `cp -r step_000000030 step_999999999999`.
  auto copy = f.add_step(999999999999, false);
  test::write_file(copy + "/.metadata", record_of(own));
  auto err = check_committed(copy);
  REQUIRE(err);
  CHECK(code_of(err) == errc::corrupt_metadata);
  CHECK(describe(err).find(copy + "/.metadata: commits step_000000030")
        != std::string::npos);
  CHECK(steps_of(f.root) == std::vector<uint64_t>{30, 31, 32});
  std::vector<step_entry> passed;
  auto latest = latest_committed(f.root, &passed);
  REQUIRE(latest);
  CHECK(latest->step == 32);
  REQUIRE(passed.size() == 1);
  CHECK(passed[0].path == copy);
  auto pruned = prune(f.root, 1);
  REQUIRE(pruned);
  CHECK(f.exists(step_name(999999999999)));
  CHECK(f.exists(step_name(32)));
}

TEST_CASE("a link named like a step fails check_committed, naming it",
          "[checkpoint_root]") {
  root_fixture f;
  auto real = f.add_step("elsewhere", true);
  fs::create_symlink(real, f.path(step_name(5)));
  CHECK(is_committed(real));
  auto err = check_committed(f.path(step_name(5)));
  REQUIRE(err);
  CHECK(code_of(err) == errc::path_escape);
  CHECK(describe(err).find(f.path(step_name(5)) + ": is a symbolic link")
        != std::string::npos);
}
