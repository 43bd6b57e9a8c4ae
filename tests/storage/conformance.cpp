// The cases of the storage conformance suite and their registration (see
// conformance.hpp). Each case drives writers and readers through the call
// order storage/storage.hpp documents, with plans from the default
// planners, for a small two-rank state dict saved in numbered versions:
// every value depends on the version, so a load tells which save it sees.

#include "tests/storage/conformance.hpp"

#include "core/error.hpp"
#include "core/planner.hpp"
#include "storage/state_dict.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace dcpp::conformance {

storage_under_test::~storage_under_test() = default;

namespace {

using fs_test::ok;
using fs_test::why;

// -- the state dict of save number `version` ----------------------------------
//
// rank 0: "w" (4x6 float), "big" (256x256 float, 256 KiB), bytes "epoch",
//         rows 0..2 of the sharded "st" (6x4 double)
// rank 1: "steps" (3 int64), bytes "cfg", rows 3..5 of "st"

constexpr int ranks = 2;

const std::vector<std::string> tensor_keys{"w", "big", "st", "steps"};
const std::vector<std::string> bytes_keys{"epoch", "cfg"};

at::Tensor global_tensor(const std::string& fqn, int version) {
  if (fqn == "w")
    return at::arange(24, at::kFloat).reshape({4, 6}) + version;
  if (fqn == "big")
    return at::arange(256 * 256, at::kFloat).reshape({256, 256}) + version;
  if (fqn == "st")
    return at::arange(24, at::kDouble).reshape({6, 4}) + 1000.0 * version;
  if (fqn == "steps")
    return at::tensor(
      std::vector<int64_t>{version, -version, int64_t{1} << 40});
  throw std::logic_error("no tensor " + fqn);
}

std::string global_bytes(const std::string& fqn, int version) {
  return fqn + " of save " + std::to_string(version);
}

/// The rows [first, first + count) of `fqn` that rank `rank` holds.
struct held_tensor {
  std::string fqn;
  int64_t first_row;
  int64_t rows;
  bool sharded;
};

std::vector<held_tensor> held_tensors(int rank) {
  if (rank == 0)
    return {{"w", 0, 4, false}, {"big", 0, 256, false}, {"st", 0, 3, true}};
  return {{"steps", 0, 3, false}, {"st", 3, 3, true}};
}

std::vector<std::string> held_bytes(int rank) {
  return {rank == 0 ? "epoch" : "cfg"};
}

dtype dtype_of(const at::Tensor& t) {
  auto x = to_dtype(t.scalar_type());
  FS_REQUIRE(x);
  return *x;
}

/// Serves the values of one rank. Keys in `failing` cannot be produced.
class value_source final : public item_source {
public:
  std::map<metadata_index, at::Tensor> tensors;
  std::map<std::string, std::string> blobs;
  std::set<std::string> failing;

  caf::expected<at::Tensor> tensor(const write_item& item) const override {
    if (failing.count(item.index.fqn) > 0)
      return make_error(errc::storage_failure,
                        "injected: cannot produce " + item.index.fqn);
    auto i = tensors.find(item.index);
    if (i == tensors.end())
      return make_error(errc::missing_key, to_string(item.index));
    return i->second;
  }

  caf::expected<std::string_view> bytes(const write_item& item) const override {
    if (failing.count(item.index.fqn) > 0)
      return make_error(errc::storage_failure,
                        "injected: cannot produce " + item.index.fqn);
    auto i = blobs.find(item.index.fqn);
    if (i == blobs.end())
      return make_error(errc::missing_key, item.index.fqn);
    return std::string_view{i->second};
  }
};

/// The planner's view and the source of one rank in save `version`.
std::pair<state_dict_view, value_source> rank_state(int rank, int version) {
  state_dict_view view;
  value_source source;
  for (const auto& h : held_tensors(rank)) {
    auto global = global_tensor(h.fqn, version);
    auto local = global.narrow(0, h.first_row, h.rows);
    item_view item;
    item.fqn = h.fqn;
    item.properties.type = dtype_of(global);
    item.global_size = global.sizes().vec();
    shape_t offsets(item.global_size.size(), 0);
    offsets[0] = h.first_row;
    item.local_chunks.push_back({offsets, local.sizes().vec()});
    item.sharded = h.sharded;
    view.items.push_back(item);
    source.tensors[metadata_index{h.fqn, offsets}] = local;
  }
  for (const auto& fqn : held_bytes(rank)) {
    item_view item;
    item.fqn = fqn;
    item.kind = item_kind::bytes;
    source.blobs[fqn] = global_bytes(fqn, version);
    item.bytes_size = source.blobs[fqn].size();
    view.items.push_back(item);
  }
  return {std::move(view), std::move(source)};
}

// -- saving -------------------------------------------------------------------

struct save_options {
  /// Keys whose data the sources cannot produce (the save fails).
  std::set<std::string> failing;
  /// Parts per rank, written from concurrent threads (`split_plan`).
  size_t threads = 1;
};

/// A save after steps 1 to 4 of the writer's call order, on every rank.
struct save_run {
  std::vector<storage_writer_ptr> writers;
  std::vector<save_plan> central;
  std::vector<value_source> sources;
  std::vector<std::vector<write_result>> results;
  metadata md;
  /// The first failure of steps 1 to 4.
  caf::error err;

  /// Step 5 on the coordinator with every rank's results.
  caf::error finish() {
    return writers[0]->finish(md, results);
  }

  /// What every rank does after a failure.
  void abort() {
    for (auto& w : writers)
      w->abort();
  }
};

/// Writes the parts of `plan` from concurrent threads and collects the
/// results in part order.
caf::expected<std::vector<write_result>>
write_parts(storage_writer& writer, const save_plan& plan,
            const item_source& source, size_t threads) {
  auto parts = writer.split_plan(plan, threads);
  REQUIRE(!parts.empty());
  REQUIRE(parts.size() <= threads);
  std::vector<caf::expected<std::vector<write_result>>> part_results(
    parts.size(), std::vector<write_result>{});
  std::vector<std::thread> workers;
  for (size_t i = 0; i < parts.size(); ++i)
    workers.emplace_back(
      [&, i] { part_results[i] = writer.write_data(parts[i], source); });
  for (auto& t : workers)
    t.join();
  std::vector<write_result> results;
  for (auto& x : part_results) {
    if (!x)
      return x.error();
    results.insert(results.end(), x->begin(), x->end());
  }
  return results;
}

save_run start_save(storage_under_test& storage, int version,
                    const save_options& opts = {}) {
  save_run run;
  std::vector<save_plan> local;
  for (int r = 0; r < ranks; ++r) {
    auto [view, source] = rank_state(r, version);
    source.failing = opts.failing;
    run.sources.push_back(std::move(source));
    run.writers.push_back(storage.make_writer());
    if ((run.err = run.writers[r]->set_up(r == 0, r)))
      return run;
    auto prepared = run.writers[r]->prepare_local_plan(
      create_default_local_save_plan(view));
    if (!prepared) {
      run.err = prepared.error();
      return run;
    }
    local.push_back(std::move(*prepared));
  }
  auto global = create_default_global_save_plan(std::move(local));
  if (!global) {
    run.err = global.error();
    return run;
  }
  run.md = global->md;
  auto central = run.writers[0]->prepare_global_plan(std::move(global->plans));
  if (!central) {
    run.err = central.error();
    return run;
  }
  run.central = std::move(*central);
  for (int r = 0; r < ranks; ++r) {
    auto res = opts.threads > 1
                 ? write_parts(*run.writers[r], run.central[r], run.sources[r],
                               opts.threads)
                 : run.writers[r]->write_data(run.central[r], run.sources[r]);
    if (!res) {
      run.err = res.error();
      return run;
    }
    run.results.push_back(std::move(*res));
  }
  return run;
}

/// A whole save, committed.
caf::error save(storage_under_test& storage, int version,
                const save_options& opts = {}) {
  auto run = start_save(storage, version, opts);
  if (run.err)
    return run.err;
  return run.finish();
}

/// An overwrite in progress: save 1 committed (its data objects in
/// `first`), then save 2 through step 4 on every rank, not finished.
save_run overwrite_in_progress(storage_under_test& storage,
                               std::set<std::string>& first) {
  FS_REQUIRE(save(storage, 1));
  first = storage.data_objects();
  REQUIRE(!first.empty());
  auto run = start_save(storage, 2);
  FS_REQUIRE(run.err);
  return run;
}

// -- loading ------------------------------------------------------------------

/// What one reader rank asks for: boxes of tensors (global coordinates)
/// and bytes values.
struct read_request {
  std::map<std::string, std::vector<chunk_storage_metadata>> boxes;
  std::vector<std::string> bytes;
};

/// Everything, whole, on one rank.
read_request whole(const std::set<std::string>& without = {}) {
  read_request req;
  for (const auto& fqn : tensor_keys)
    if (without.count(fqn) == 0) {
      auto sizes = global_tensor(fqn, 0).sizes().vec();
      req.boxes[fqn].push_back({shape_t(sizes.size(), 0), sizes});
    }
  for (const auto& fqn : bytes_keys)
    if (without.count(fqn) == 0)
      req.bytes.push_back(fqn);
  return req;
}

/// The box of `t` at `offsets` with `lengths`.
at::Tensor narrow_box(at::Tensor t, const shape_t& offsets,
                      const shape_t& lengths) {
  for (size_t d = 0; d < lengths.size(); ++d)
    t = t.narrow(static_cast<int64_t>(d), offsets[d], lengths[d]);
  return t;
}

/// Destinations of one reader rank: one tensor per requested box, filled
/// with a marker the saved values never take.
class value_target final : public load_target {
public:
  std::map<metadata_index, at::Tensor> tensors;
  std::map<std::string, std::string> blobs;

  caf::expected<at::Tensor> tensor(const read_item& item) override {
    auto i = tensors.find(item.dest_index);
    if (i == tensors.end())
      return make_error(errc::missing_key, to_string(item.dest_index));
    return narrow_box(i->second, item.dest_offsets, item.lengths);
  }

  caf::error set_bytes(const read_item& item, std::string data) override {
    std::lock_guard<std::mutex> guard{mx_};
    blobs[item.dest_index.fqn] = std::move(data);
    return {};
  }

private:
  std::mutex mx_;
};

/// Reads with one reader per request (rank = position), through the whole
/// call order of the reader; each rank reads its plan in `threads` parts
/// from concurrent threads. `targets` receives the destinations.
caf::error
load(storage_under_test& storage, const std::vector<read_request>& requests,
     std::vector<std::unique_ptr<value_target>>& targets, size_t threads = 1) {
  std::vector<storage_reader_ptr> readers;
  std::vector<load_plan> local;
  targets.clear();
  for (size_t r = 0; r < requests.size(); ++r) {
    readers.push_back(storage.make_reader());
    auto md = readers[r]->read_metadata();
    if (!md)
      return md.error();
    if (auto err = readers[r]->set_up(*md, r == 0, static_cast<int32_t>(r)))
      return err;
    state_dict_view view;
    auto target = std::make_unique<value_target>();
    for (const auto& [fqn, boxes] : requests[r].boxes) {
      const auto& saved = md->state_dict_metadata.at(fqn).tensor;
      item_view item;
      item.fqn = fqn;
      item.properties = saved.properties;
      item.global_size = saved.size;
      item.local_chunks = boxes;
      item.sharded = true;
      view.items.push_back(item);
      for (const auto& box : boxes)
        target->tensors[metadata_index{fqn, box.offsets}] = at::full(
          box.sizes, -7,
          at::TensorOptions().dtype(to_scalar_type(saved.properties.type)));
    }
    for (const auto& fqn : requests[r].bytes) {
      item_view item;
      item.fqn = fqn;
      item.kind = item_kind::bytes;
      view.items.push_back(item);
    }
    auto plan = create_default_local_load_plan(view, *md, load_options{});
    if (!plan)
      return plan.error();
    auto prepared = readers[r]->prepare_local_plan(std::move(*plan));
    if (!prepared)
      return prepared.error();
    local.push_back(std::move(*prepared));
    targets.push_back(std::move(target));
  }
  auto central = readers[0]->prepare_global_plan(std::move(local));
  if (!central)
    return central.error();
  for (size_t r = 0; r < requests.size(); ++r) {
    auto parts = readers[r]->split_plan((*central)[r], threads);
    REQUIRE(!parts.empty());
    REQUIRE(parts.size() <= threads);
    std::vector<caf::error> errs(parts.size());
    std::vector<std::thread> workers;
    for (size_t i = 0; i < parts.size(); ++i)
      workers.emplace_back(
        [&, i] { errs[i] = readers[r]->read_data(parts[i], *targets[r]); });
    for (auto& t : workers)
      t.join();
    for (auto& err : errs)
      if (err)
        return err;
  }
  return {};
}

/// Checks that the destinations hold the values of save `version`.
void check_values(const std::vector<read_request>& requests,
                  const std::vector<std::unique_ptr<value_target>>& targets,
                  int version) {
  REQUIRE(targets.size() == requests.size());
  for (size_t r = 0; r < requests.size(); ++r) {
    for (const auto& [fqn, boxes] : requests[r].boxes)
      for (const auto& box : boxes) {
        INFO("rank " << r << ", " << fqn << " at " << to_string(box.offsets));
        auto expected = narrow_box(global_tensor(fqn, version), box.offsets,
                                   box.sizes);
        CHECK(targets[r]
                ->tensors.at(metadata_index{fqn, box.offsets})
                .equal(expected));
      }
    for (const auto& fqn : requests[r].bytes) {
      INFO("rank " << r << ", " << fqn);
      REQUIRE(targets[r]->blobs.count(fqn) == 1);
      CHECK(targets[r]->blobs.at(fqn) == global_bytes(fqn, version));
    }
  }
}

/// Requires that a reader loads save `version`, every value of it.
void require_checkpoint(storage_under_test& storage, int version) {
  INFO("expecting save " << version);
  std::vector<read_request> requests{whole()};
  std::vector<std::unique_ptr<value_target>> targets;
  FS_REQUIRE(load(storage, requests, targets));
  check_values(requests, targets, version);
}

/// Requires that the storage holds no committed checkpoint.
void require_no_checkpoint(storage_under_test& storage) {
  auto md = storage.make_reader()->read_metadata();
  REQUIRE(!md);
  CHECK(code_of(md.error()) == errc::not_found);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::set<std::string> intersection(const std::set<std::string>& xs,
                                   const std::set<std::string>& ys) {
  std::set<std::string> out;
  std::set_intersection(xs.begin(), xs.end(), ys.begin(), ys.end(),
                        std::inserter(out, out.end()));
  return out;
}

bool includes(const std::set<std::string>& xs,
              const std::set<std::string>& ys) {
  return std::includes(xs.begin(), xs.end(), ys.begin(), ys.end());
}

/// `results` less what rank `rank` wrote for `fqn`, which it did write.
std::vector<std::vector<write_result>>
without(std::vector<std::vector<write_result>> results, int rank,
        const std::string& fqn) {
  auto& xs = results.at(static_cast<size_t>(rank));
  auto n = xs.size();
  xs.erase(std::remove_if(xs.begin(), xs.end(),
                          [&](const write_result& x) {
                            return x.index.fqn == fqn;
                          }),
           xs.end());
  REQUIRE(xs.size() + 1 == n);
  return results;
}

// -- the cases ----------------------------------------------------------------

void round_trip(storage_under_test& storage, const storage_params&) {
  auto run = start_save(storage, 1);
  FS_REQUIRE(run.err);
  // Step 3 gives every rank a storage prefix of its own.
  REQUIRE(run.central.size() == 2);
  CHECK(run.central[0].storage_data != run.central[1].storage_data);
  FS_REQUIRE(run.finish());
  require_checkpoint(storage, 1);
  auto md = storage.make_reader()->read_metadata();
  FS_REQUIRE(md);
  // Every chunk and bytes value has storage, and nothing else does.
  size_t chunks = 0;
  for (const auto& [fqn, item] : md->state_dict_metadata) {
    if (item.kind == item_kind::bytes) {
      ++chunks;
      CHECK(md->storage_data.count(metadata_index{fqn}) == 1);
      continue;
    }
    for (const auto& c : item.tensor.chunks) {
      ++chunks;
      INFO(fqn << " at " << to_string(c.offsets));
      CHECK(md->storage_data.count(metadata_index{fqn, c.offsets}) == 1);
    }
  }
  CHECK(chunks == 7);
  CHECK(md->storage_data.size() == chunks);
}

void invisible_until_finish(storage_under_test& storage,
                            const storage_params&) {
  require_no_checkpoint(storage);
  auto run = start_save(storage, 1);
  FS_REQUIRE(run.err);
  require_no_checkpoint(storage);
  FS_REQUIRE(run.finish());
  require_checkpoint(storage, 1);
}

void old_checkpoint_until_validated(storage_under_test& storage,
                                    const storage_params&) {
  std::set<std::string> first;
  auto run = overwrite_in_progress(storage, first);
  // Everything of save 2 is written; save 1 is still the checkpoint.
  require_checkpoint(storage, 1);
  // A finish without rank 1's results is refused ...
  auto err = run.writers[0]->finish(run.md, without(run.results, 1, "st"));
  REQUIRE(err);
  CHECK(code_of(err) == errc::missing_key);
  CHECK(contains(context_of(err), "st"));
  // ... and save 1 stays readable, before and after the abort.
  require_checkpoint(storage, 1);
  run.abort();
  CHECK(storage.data_objects() == first);
  require_checkpoint(storage, 1);
  // The next complete save replaces it.
  FS_REQUIRE(save(storage, 3));
  require_checkpoint(storage, 3);
}

void finish_refuses_aborted_data(storage_under_test& storage,
                                 const storage_params&) {
  std::set<std::string> before;
  auto run = overwrite_in_progress(storage, before);
  // Rank 1 gave up on the save and dropped its data (abort is allowed on
  // any failure); the coordinator still has every rank's results.
  run.writers[1]->abort();
  CHECK(run.finish());
  // Save 1 is still the checkpoint, all of it, with all of its data.
  require_checkpoint(storage, 1);
  run.abort();
  CHECK(storage.data_objects() == before);
  require_checkpoint(storage, 1);
}

void finish_refuses_uncovered_chunks(storage_under_test& storage,
                                     const storage_params&) {
  auto run = start_save(storage, 1);
  FS_REQUIRE(run.err);
  std::vector<std::vector<write_result>> partial;
  // The error names a key without data (any one of several).
  std::vector<std::string> missing;
  std::string what;
  SECTION("a tensor shard without data") {
    what = "a tensor shard without data";
    missing = {"st"}; // rank 1 wrote the second shard
    partial = without(run.results, 1, "st");
  }
  SECTION("a bytes value without data") {
    what = "a bytes value without data";
    missing = {"epoch"};
    partial = without(run.results, 0, "epoch");
  }
  SECTION("a whole rank without results") {
    what = "a whole rank without results";
    missing = {"steps", "cfg", "st"};
    partial = {run.results[0]};
  }
  INFO(what);
  auto err = run.writers[0]->finish(run.md, partial);
  REQUIRE(err);
  CHECK(code_of(err) == errc::missing_key);
  INFO(context_of(err));
  CHECK(std::any_of(missing.begin(), missing.end(), [&](const std::string& x) {
    return contains(context_of(err), x);
  }));
  require_no_checkpoint(storage);
  run.abort();
  require_no_checkpoint(storage);
}

void abort_keeps_old_checkpoint(storage_under_test& storage,
                                const storage_params&) {
  std::set<std::string> before;
  auto run = overwrite_in_progress(storage, before);
  CHECK(storage.data_objects().size() > before.size());
  run.abort();
  CHECK(storage.data_objects() == before);
  require_checkpoint(storage, 1);
}

void failed_write_keeps_old_checkpoint(storage_under_test& storage,
                                       const storage_params&) {
  FS_REQUIRE(save(storage, 1));
  auto before = storage.data_objects();
  save_options opts;
  opts.failing = {"steps"}; // rank 1 fails, after rank 0 wrote everything
  auto run = start_save(storage, 2, opts);
  REQUIRE(run.err);
  CHECK(contains(describe(run.err), "steps"));
  CHECK(run.results.size() == 1);
  require_checkpoint(storage, 1);
  run.abort();
  CHECK(storage.data_objects() == before);
  require_checkpoint(storage, 1);
}

void abort_after_commit(storage_under_test& storage, const storage_params&) {
  std::set<std::string> first;
  auto run = overwrite_in_progress(storage, first);
  FS_REQUIRE(run.finish());
  auto committed = storage.data_objects();
  run.abort(); // e.g. a rank learns of the outcome late
  CHECK(storage.data_objects() == committed);
  require_checkpoint(storage, 2);
}

void resharded_read(storage_under_test& storage, const storage_params&) {
  FS_REQUIRE(save(storage, 1));
  // Saved: "st" in two row shards, "w" whole. Read: three ranks, "st" in
  // column boxes (each crossing both saved shards), "w" in row boxes and
  // an inner box; the bytes values on other ranks than wrote them.
  std::vector<read_request> requests(3);
  requests[0].boxes["st"] = {{{0, 0}, {6, 2}}};
  requests[1].boxes["st"] = {{{0, 2}, {6, 1}}};
  requests[2].boxes["st"] = {{{0, 3}, {6, 1}}};
  requests[0].boxes["w"] = {{{0, 0}, {1, 6}}, {{3, 0}, {1, 6}}};
  requests[1].boxes["w"] = {{{1, 1}, {2, 4}}};
  requests[2].boxes["steps"] = {{{1}, {2}}};
  requests[1].bytes = {"epoch"};
  requests[2].bytes = {"epoch", "cfg"};
  std::vector<std::unique_ptr<value_target>> targets;
  FS_REQUIRE(load(storage, requests, targets));
  check_values(requests, targets, 1);
  // The column boxes cover "st": stitched together they are the tensor.
  auto st = at::cat({targets[0]->tensors.at(metadata_index{"st", {0, 0}}),
                     targets[1]->tensors.at(metadata_index{"st", {0, 2}}),
                     targets[2]->tensors.at(metadata_index{"st", {0, 3}})},
                    1);
  CHECK(st.equal(global_tensor("st", 1)));
}

void concurrent_parts(storage_under_test& storage, const storage_params&) {
  save_options opts;
  opts.threads = 3;
  FS_REQUIRE(save(storage, 1, opts));
  std::vector<read_request> requests{whole(), whole()};
  std::vector<std::unique_ptr<value_target>> targets;
  FS_REQUIRE(load(storage, requests, targets, 3));
  check_values(requests, targets, 1);
}

void corruption_names_key(storage_under_test& storage, const storage_params&) {
  FS_REQUIRE(save(storage, 1));
  auto md = storage.make_reader()->read_metadata();
  FS_REQUIRE(md);
  auto info = md->storage_data.find(metadata_index{"big", {0, 0}});
  REQUIRE(info != md->storage_data.end());
  REQUIRE(storage.corrupt(info->second));
  std::vector<std::unique_ptr<value_target>> targets;
  auto err = load(storage, {whole()}, targets);
  REQUIRE(err);
  CHECK(code_of(err) == errc::checksum_mismatch);
  CHECK(contains(context_of(err), "big"));
  // The other items are intact and still load.
  std::vector<read_request> rest{whole({"big"})};
  FS_REQUIRE(load(storage, rest, targets));
  check_values(rest, targets, 1);
}

void garbage_collected_after_commit(storage_under_test& storage,
                                    const storage_params&) {
  std::set<std::string> first;
  auto run = overwrite_in_progress(storage, first);
  // Save 2 wrote everything: nothing of save 1 is gone yet.
  auto during = storage.data_objects();
  CHECK(includes(during, first));
  CHECK(during.size() > first.size());
  // A refused finish removes nothing either.
  CHECK(run.writers[0]->finish(run.md, {run.results[1]}));
  CHECK(storage.data_objects() == during);
  require_checkpoint(storage, 1);
  // After the commit save 1's data is gone, save 2's is there.
  FS_REQUIRE(run.finish());
  auto second = storage.data_objects();
  CHECK(intersection(second, first).empty());
  CHECK(includes(during, second));
  require_checkpoint(storage, 2);
}

void leftovers_collected_by_next_commit(storage_under_test& storage,
                                        const storage_params&) {
  std::set<std::string> first;
  {
    // Save 2 wrote its data, then its ranks vanished: no finish, no abort.
    auto run = overwrite_in_progress(storage, first);
  }
  auto leftovers = storage.data_objects();
  CHECK(leftovers.size() > first.size());
  require_checkpoint(storage, 1);
  FS_REQUIRE(save(storage, 3));
  auto third = storage.data_objects();
  CHECK(intersection(third, leftovers).empty());
  CHECK(third.size() == first.size());
  require_checkpoint(storage, 3);
}

void repeated_overwrites(storage_under_test& storage, const storage_params&) {
  FS_REQUIRE(save(storage, 1));
  auto count = storage.data_objects().size();
  for (int version = 2; version <= 4; ++version) {
    INFO("save " << version);
    FS_REQUIRE(save(storage, version));
    require_checkpoint(storage, version);
    CHECK(storage.data_objects().size() == count);
  }
}

// -- registration -------------------------------------------------------------

using case_fn = void (*)(storage_under_test&, const storage_params&);

struct suite_case {
  const char* name;
  case_fn fn;
  /// Registered only if the backend verifies checksums.
  bool needs_checksums;
};

// Names become ctest names: no commas, brackets or quotes.
constexpr suite_case suite[] = {
  {"a save of tensors shards and bytes reads back", round_trip, false},
  {"the checkpoint is invisible until finish commits it",
   invisible_until_finish, false},
  {"commit keeps old checkpoint until the new one validates",
   old_checkpoint_until_validated, false},
  {"finish refuses results that do not cover every chunk",
   finish_refuses_uncovered_chunks, false},
  {"finish refuses results whose data a rank aborted and keeps the old "
   "checkpoint",
   finish_refuses_aborted_data, false},
  {"abort of an overwrite leaves the old checkpoint intact",
   abort_keeps_old_checkpoint, false},
  {"a failed write leaves the old checkpoint intact",
   failed_write_keeps_old_checkpoint, false},
  {"abort after the commit keeps the new checkpoint", abort_after_commit,
   false},
  {"resharded read of row shards into column boxes on three ranks",
   resharded_read, false},
  {"split plans write and read from concurrent threads", concurrent_parts,
   false},
  {"corrupted bytes fail the read naming the key", corruption_names_key, true},
  {"garbage collection removes older data after the commit only",
   garbage_collected_after_commit, false},
  {"leftovers of an unfinished save go with the next commit",
   leftovers_collected_by_next_commit, false},
  {"repeated overwrites read the latest and keep one save of data",
   repeated_overwrites, false},
};

/// Runs one case on a fresh storage location of the backend.
class case_invoker final : public Catch::ITestInvoker {
public:
  case_invoker(std::shared_ptr<const storage_params> params, case_fn fn,
               std::string known_failure)
    : params_(std::move(params)), fn_(fn),
      known_failure_(std::move(known_failure)) {
    // nop
  }

  void invoke() const override {
    if (!known_failure_.empty())
      WARN("known failure of the " << params_->name
                                   << " backend: " << known_failure_);
    auto storage = params_->make_storage();
    REQUIRE(storage != nullptr);
    fn_(*storage, *params_);
  }

private:
  std::shared_ptr<const storage_params> params_;
  case_fn fn_;
  std::string known_failure_;
};

/// Fails: `params` names cases the suite does not have.
class unknown_cases_invoker final : public Catch::ITestInvoker {
public:
  explicit unknown_cases_invoker(std::string names) : names_(std::move(names)) {
    // nop
  }

  void invoke() const override {
    FAIL("known_failures names cases the suite lacks: " << names_);
  }

private:
  std::string names_;
};

void add_test(Catch::ITestInvoker* invoker, const std::string& name,
              const std::string& tags) {
  // Catch copies name and tags into its registry.
  Catch::AutoReg reg{invoker, CATCH_INTERNAL_LINEINFO, Catch::StringRef{},
                     Catch::NameAndTags{name, tags}};
}

} // namespace

bool register_storage_tests(storage_params params) {
  auto shared = std::make_shared<const storage_params>(std::move(params));
  const auto& name = shared->name;
  auto unknown = shared->known_failures;
  for (const auto& c : suite) {
    unknown.erase(c.name);
    if (c.needs_checksums && !shared->verifies_checksums)
      continue;
    std::string tags = "[storage][conformance][" + name + "]";
    std::string known;
    if (auto i = shared->known_failures.find(c.name);
        i != shared->known_failures.end()) {
      known = i->second;
      tags += "[!shouldfail]";
    }
    add_test(new case_invoker(shared, c.fn, std::move(known)),
             name + "." + c.name, tags);
  }
  if (!unknown.empty()) {
    std::string names;
    for (const auto& [case_name, reason] : unknown)
      names += (names.empty() ? "" : "; ") + case_name;
    add_test(new unknown_cases_invoker(std::move(names)),
             name + ".known failures name cases of the suite",
             "[storage][conformance][" + name + "]");
  }
  return true;
}

} // namespace dcpp::conformance
