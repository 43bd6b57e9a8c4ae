// Validation errors of load planning and of checkpoint metadata: each
// names the fqn and carries the right errc.

#include "core/planner.hpp"
#include "tests/core/planner_fixtures.hpp"

#include <catch2/catch.hpp>

#include <limits>

using namespace dcpp;
using namespace dcpp::test;

namespace {

/// A checkpoint of one rank: "model.w" float32 [4, 3], "step" int64 0-d,
/// "cfg" bytes.
metadata checkpoint() {
  std::vector<state_dict_view> views(1);
  views[0].items.push_back(plain("model.w", {4, 3}));
  views[0].items.push_back(plain("step", {}, dtype::int64));
  views[0].items.push_back(bytes("cfg", 9));
  return saved_metadata(views);
}

caf::error load_error(const state_dict_view& request, const metadata& md,
                      load_options opts = {}) {
  auto res = create_default_local_load_plan(request, md, opts);
  if (res)
    FAIL("load planning unexpectedly succeeded");
  return res.error();
}

state_dict_view request_of(item_view item) {
  state_dict_view v;
  v.items.push_back(std::move(item));
  return v;
}

/// Metadata with one tensor "t" of `size` saved as `chunks`.
metadata tensor_md(shape_t size, std::vector<chunk_storage_metadata> chunks) {
  metadata md;
  auto& t = md.state_dict_metadata["t"];
  t.kind = item_kind::tensor;
  t.tensor.size = std::move(size);
  t.tensor.chunks = std::move(chunks);
  return md;
}

} // namespace

TEST_CASE("load plan of a whole checkpoint", "[validate][load]") {
  auto md = checkpoint();
  state_dict_view request;
  request.items.push_back(plain("model.w", {4, 3}));
  request.items.push_back(plain("step", {}, dtype::int64));
  request.items.push_back(bytes("cfg"));
  auto plan = load_plan_of(request, md);
  REQUIRE(plan.items.size() == 3);
  const auto& b = plan.items[2];
  CHECK(b.type == load_item_type::bytes);
  CHECK(b.dest_index == metadata_index("cfg"));
  CHECK(b.storage_index == metadata_index("cfg"));
  CHECK_FALSE(b.storage_index.has_offset);
  // DCP's placeholders.
  CHECK(b.dest_offsets == shape_t{0});
  CHECK(b.storage_offsets == shape_t{0});
  CHECK(b.lengths == shape_t{0});
}

TEST_CASE("missing keys: strict fails, non-strict skips", "[validate][load]") {
  auto md = checkpoint();
  state_dict_view request;
  request.items.push_back(plain("model.w", {4, 3}));
  request.items.push_back(plain("model.bias", {3}));
  request.items.push_back(bytes("cfg"));
  check_error(load_error(request, md), errc::missing_key, "model.bias");
  load_options opts;
  opts.strict = false;
  auto plan = load_plan_of(request, md, opts);
  REQUIRE(plan.items.size() == 2);
  CHECK(plan.items[0].dest_index.fqn == "model.w");
  CHECK(plan.items[1].dest_index.fqn == "cfg");
}

TEST_CASE("shape mismatch", "[validate][load]") {
  auto md = checkpoint();
  auto err = load_error(request_of(plain("model.w", {4, 4})), md);
  check_error(err, errc::shape_mismatch, "model.w");
  CHECK(context_of(err).find("[4, 4]") != std::string::npos);
  CHECK(context_of(err).find("[4, 3]") != std::string::npos);
  // A 0-d tensor is not a 1-element vector.
  check_error(load_error(request_of(plain("step", {1}, dtype::int64)), md),
              errc::shape_mismatch, "step");
  // Non-strict mode does not hide mismatches.
  load_options opts;
  opts.strict = false;
  check_error(load_error(request_of(plain("model.w", {3}, dtype::float32)), md,
                         opts),
              errc::shape_mismatch, "model.w");
}

TEST_CASE("a dtype libtorch lacks loads only as itself", "[validate][load]") {
  std::vector<state_dict_view> views(1);
  views[0].items.push_back(plain("model.u", {4}, dtype::uint16));
  auto md = saved_metadata(views);
  // Into a tensor of any libtorch dtype, its carrier's included: refused
  // even with the dtype check off, which would cast its bytes.
  for (auto type : {dtype::int16, dtype::float32}) {
    for (bool check : {true, false}) {
      load_options opts;
      opts.check_dtype = check;
      auto err = load_error(request_of(plain("model.u", {4}, type)), md, opts);
      check_error(err, errc::unsupported, "model.u");
      CHECK(context_of(err).find("saved as torch.uint16, which libtorch 1.13 "
                                 "has no tensor type for")
            != std::string::npos);
    }
  }
  // As itself (a state dict that carries it: make_state_dict_for).
  CHECK(load_plan_of(request_of(plain("model.u", {4}, dtype::uint16)), md)
          .items.size()
        == 1);
}

TEST_CASE("dtype mismatch", "[validate][load]") {
  auto md = checkpoint();
  auto request = request_of(plain("model.w", {4, 3}, dtype::bfloat16));
  auto err = load_error(request, md);
  check_error(err, errc::dtype_mismatch, "model.w");
  CHECK(context_of(err).find("bfloat16") != std::string::npos);
  CHECK(context_of(err).find("float32") != std::string::npos);
  // Like DCP (which casts on copy) when the check is off.
  load_options opts;
  opts.check_dtype = false;
  CHECK(load_plan_of(request, md, opts).items.size() == 1);
}

TEST_CASE("kind mismatch", "[validate][load]") {
  auto md = checkpoint();
  auto err = load_error(request_of(bytes("model.w")), md);
  check_error(err, errc::kind_mismatch, "model.w");
  CHECK(context_of(err).find("bytes") != std::string::npos);
  CHECK(context_of(err).find("tensor") != std::string::npos);
  check_error(load_error(request_of(plain("cfg", {2})), md),
              errc::kind_mismatch, "cfg");
}

TEST_CASE("requested chunks out of bounds", "[validate][load]") {
  auto md = checkpoint();
  check_error(
    load_error(request_of(sharded("model.w", {4, 3}, {box({2, 0}, {3, 3})})),
               md),
    errc::chunk_out_of_bounds, "model.w");
  check_error(
    load_error(request_of(sharded("model.w", {4, 3}, {box({0, -1}, {1, 1})})),
               md),
    errc::chunk_out_of_bounds, "model.w");
  check_error(
    load_error(request_of(sharded("model.w", {4, 3}, {box({0}, {1})})), md),
    errc::chunk_out_of_bounds, "model.w");
}

TEST_CASE("loading from a checkpoint with holes or overlaps fails",
          "[validate][load]") {
  // Written by someone else (DCP skips the coverage check with one plan).
  auto holes = tensor_md({6}, {box({0}, {2}), box({4}, {2})});
  check_error(load_error(request_of(plain("t", {6})), holes),
              errc::incomplete_chunks, "t");
  // A request that avoids the hole is fine.
  CHECK(load_plan_of(request_of(sharded("t", {6}, {box({0}, {2})})), holes)
          .items.size()
        == 1);
  auto overlap = tensor_md({6}, {box({0}, {4}), box({2}, {4})});
  check_error(load_error(request_of(plain("t", {6})), overlap),
              errc::overlapping_chunks, "t");
  auto wrong_rank = tensor_md({6}, {box({0, 0}, {6, 1})});
  check_error(load_error(request_of(plain("t", {6})), wrong_rank),
              errc::corrupt_metadata, "t");
}

TEST_CASE("validate_metadata accepts valid tensors", "[validate]") {
  CHECK(!validate_metadata(checkpoint()));
  CHECK(!validate_metadata(tensor_md({4, 3}, {box({0, 0}, {4, 3})})));
  CHECK(!validate_metadata(
    tensor_md({4, 3}, {box({2, 0}, {2, 3}), box({0, 0}, {2, 3})})));
  CHECK(!validate_metadata(tensor_md({}, {box({}, {})})));
  CHECK(!validate_metadata(tensor_md({0, 3}, {box({0, 0}, {0, 3})})));
  // A tensor without elements needs no chunk; empty chunks never overlap.
  CHECK(!validate_metadata(tensor_md({0}, {})));
  CHECK(!validate_metadata(
    tensor_md({2}, {box({0}, {0}), box({0}, {2}), box({2}, {0})})));
  // A grid: the sweep must find no false overlaps.
  std::vector<chunk_storage_metadata> grid;
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t c = 0; c < 4; ++c)
      grid.push_back(box({r * 2, c * 3}, {2, 3}));
  CHECK(!validate_metadata(tensor_md({8, 12}, grid)));
}

TEST_CASE("validate_metadata: overlapping chunks", "[validate]") {
  auto err = validate_metadata(tensor_md(
    {4, 4}, {box({0, 0}, {2, 4}), box({2, 0}, {2, 2}), box({1, 2}, {3, 2})}));
  check_error(err, errc::overlapping_chunks, "t");
  CHECK(context_of(err).find("chunk #0") != std::string::npos);
  CHECK(context_of(err).find("chunk #2") != std::string::npos);
  // Same box twice.
  check_error(validate_metadata(tensor_md({4}, {box({0}, {4}), box({0}, {4})})),
              errc::overlapping_chunks, "t");
  // Only in the second dimension: chunks that start at the same row.
  check_error(validate_metadata(
                tensor_md({2, 6}, {box({0, 0}, {2, 4}), box({0, 3}, {2, 3})})),
              errc::overlapping_chunks, "t");
  // 0-d with two chunks.
  check_error(validate_metadata(tensor_md({}, {box({}, {}), box({}, {})})),
              errc::overlapping_chunks, "t");
}

TEST_CASE("validate_metadata: holes", "[validate]") {
  auto err = validate_metadata(
    tensor_md({4, 4}, {box({0, 0}, {2, 4}), box({2, 0}, {2, 2})}));
  check_error(err, errc::incomplete_chunks, "t");
  CHECK(context_of(err).find("12 of 16") != std::string::npos);
  check_error(validate_metadata(tensor_md({3}, {})), errc::incomplete_chunks,
              "t");
  check_error(validate_metadata(tensor_md({}, {})), errc::incomplete_chunks,
              "t");
}

TEST_CASE("validate_metadata: chunks out of bounds", "[validate]") {
  check_error(validate_metadata(tensor_md({4}, {box({2}, {3})})),
              errc::chunk_out_of_bounds, "t");
  check_error(validate_metadata(
                tensor_md({4}, {box({-1}, {1}), box({0}, {4})})),
              errc::chunk_out_of_bounds, "t");
  check_error(validate_metadata(tensor_md({4}, {box({0}, {-1})})),
              errc::chunk_out_of_bounds, "t");
  check_error(validate_metadata(tensor_md({4}, {box({0, 0}, {4, 1})})),
              errc::chunk_out_of_bounds, "t");
  // No overflow on absurd values.
  constexpr auto big = std::numeric_limits<int64_t>::max();
  check_error(validate_metadata(tensor_md({4}, {box({big}, {big})})),
              errc::chunk_out_of_bounds, "t");
  check_error(validate_metadata(tensor_md({big, big}, {})), errc::too_large,
              "t");
  check_error(validate_metadata(tensor_md({-4}, {})), errc::corrupt_metadata,
              "t");
}

TEST_CASE("validate_metadata ignores bytes and names the failing tensor",
          "[validate]") {
  auto md = checkpoint();
  auto& bad = md.state_dict_metadata["zeta.bad"];
  bad.tensor.size = {2};
  check_error(validate_metadata(md), errc::incomplete_chunks, "zeta.bad");
}
