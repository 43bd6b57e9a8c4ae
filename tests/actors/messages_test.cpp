// Every wire message through both encodings: CAF's binary serializer
// (inspect) and the cereal wire codec of the future ZeroMQ transport.

#include "messages/wire.hpp"

#include "actors/failure.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace dcpp;

namespace {

envelope sample_header(op_kind k = op_kind::save) {
  envelope hdr;
  hdr.op = op_id{k, 42};
  hdr.from = 3;
  hdr.to = 1;
  return hdr;
}

save_plan sample_save_plan() {
  save_plan plan;
  write_item item;
  item.index = metadata_index{"model.w", {4, 0}, 2};
  item.type = write_item_type::shard;
  item.tensor_data.chunk = {{4, 0}, {4, 8}};
  item.tensor_data.properties.type = dtype::bfloat16;
  item.tensor_data.size = {16, 8};
  plan.items.push_back(item);
  write_item bytes;
  bytes.index = metadata_index{"optim.step"};
  bytes.type = write_item_type::bytes;
  bytes.bytes_size = 17;
  plan.items.push_back(bytes);
  plan.storage_data = "__3_";
  plan.planner_data = "mapping";
  plan.usable = false;
  return plan;
}

load_plan sample_load_plan() {
  load_plan plan;
  read_item item;
  item.type = load_item_type::tensor;
  item.dest_index = metadata_index{"model.w", {0, 0}, 0};
  item.dest_offsets = {1, 0};
  item.storage_index = metadata_index{"model.w", {4, 0}, 1};
  item.storage_offsets = {0, 2};
  item.lengths = {3, 6};
  plan.items.push_back(item);
  plan.storage_data = "s";
  return plan;
}

metadata sample_metadata() {
  metadata md;
  tensor_storage_metadata t;
  t.properties.type = dtype::float16;
  t.size = {16, 8};
  t.chunks = {{{0, 0}, {4, 8}}, {{4, 0}, {12, 8}}};
  item_metadata im;
  im.tensor = t;
  md.state_dict_metadata["model.w"] = im;
  md.state_dict_metadata["optim.step"] = item_metadata::bytes();
  md.planner_data["optim.step"] = {"optim", "step"};
  md.storage_data[metadata_index{"model.w", {4, 0}}]
    = storage_info{"__1_0.distcp", 128, 4096, "xxh64:0123456789abcdef"};
  md.version = "1.0.0";
  md.save_id = "id";
  md.checkpoint_id = "/tmp/x";
  return md;
}

std::vector<write_result> sample_results() {
  write_result res;
  res.index = metadata_index{"model.w", {4, 0}, 1};
  res.size_in_bytes = 4096;
  res.storage_data = storage_info{"__1_0.distcp", 128, 4096, ""};
  return {res};
}

caf::error sample_error() {
  return make_checkpoint_failure(op_id{op_kind::save, 42}, "write",
                                 {{1, make_error(errc::io_error, "disk full")},
                                  {3, make_error(errc::timeout, "late")}});
}

template <class T>
void round_trip(const T& x) {
  // cereal wire codec
  auto frame = to_wire(x);
  T y;
  REQUIRE_FALSE(from_wire(frame, y));
  CHECK(caf::deep_to_string(x) == caf::deep_to_string(y));
  auto hdr = envelope_from_wire(frame);
  REQUIRE(hdr);
  CHECK(hdr->op == x.hdr.op);
  CHECK(hdr->from == x.hdr.from);
  CHECK(hdr->to == x.hdr.to);
  CHECK(hdr->version == protocol_version);
  auto msg = message_from_wire(frame);
  REQUIRE(msg);
  REQUIRE(msg->template match_elements<T>());
  CHECK(caf::deep_to_string(msg->template get_as<T>(0))
        == caf::deep_to_string(x));
  auto again = message_to_wire(*msg);
  REQUIRE(again);
  CHECK(*again == frame);
  // a truncated frame fails cleanly
  T z;
  auto err = from_wire(frame.substr(0, frame.size() / 2), z);
  CHECK(code_of(err) == errc::corrupt_item);
  // CAF binary serializer (inspect)
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  REQUIRE_FALSE(sink(const_cast<T&>(x)));
  T w;
  caf::binary_deserializer source{sys, buf};
  REQUIRE_FALSE(source(w));
  CHECK(caf::deep_to_string(w) == caf::deep_to_string(x));
  CHECK(caf::deep_to_string(x).find("unprintable") == std::string::npos);
}

} // namespace

TEST_CASE("every wire message round-trips through both encodings",
          "[messages]") {
  auto hdr = sample_header();
  auto lhdr = sample_header(op_kind::load);
  round_trip(local_save_plan_msg{hdr, 1500, sample_save_plan(), caf::error{}});
  round_trip(local_save_plan_msg{hdr, 1500, save_plan{},
                                 make_error(errc::io_error, "/x: EIO")});
  round_trip(global_save_step_msg{hdr, {sample_save_plan(), save_plan{}}});
  round_trip(global_save_step_done_msg{
    hdr, global_save_plan{{sample_save_plan()}, sample_metadata()},
    caf::error{}});
  round_trip(central_save_plan_msg{hdr, sample_save_plan()});
  round_trip(write_done_msg{hdr, sample_results(), caf::error{}});
  round_trip(write_done_msg{hdr, {}, make_error(errc::storage_failure, "x")});
  round_trip(commit_msg{hdr, sample_metadata(), {sample_results(), {}}});
  round_trip(commit_done_msg{hdr, caf::error{}});
  round_trip(local_load_plan_msg{lhdr, 10, sample_load_plan(), caf::error{}});
  round_trip(global_load_step_msg{lhdr, {sample_load_plan()}});
  round_trip(global_load_step_done_msg{lhdr, {sample_load_plan()},
                                       caf::error{}});
  round_trip(central_load_plan_msg{lhdr, sample_load_plan()});
  round_trip(read_done_msg{lhdr, make_error(errc::checksum_mismatch, "k")});
  round_trip(op_outcome_msg{hdr, caf::error{}, sample_metadata()});
  round_trip(op_outcome_msg{hdr, sample_error(), metadata{}});
}

TEST_CASE("errors cross the wire with code, category and context",
          "[messages]") {
  auto err = sample_error();
  op_outcome_msg out{sample_header(), err, metadata{}};
  op_outcome_msg in;
  REQUIRE_FALSE(from_wire(to_wire(out), in));
  CHECK(in.error == err);
  CHECK(describe(in.error) == describe(err));
  CHECK(context_of(in.error) == context_of(err));
  // A CAF system error keeps its code and category.
  out.error = caf::sec::request_timeout;
  REQUIRE_FALSE(from_wire(to_wire(out), in));
  CHECK(in.error == caf::sec::request_timeout);
}

TEST_CASE("bad frames are refused", "[messages]") {
  read_done_msg x;
  CHECK(code_of(from_wire(std::string{}, x)) == errc::protocol_error);
  CHECK(code_of(from_wire(std::string(1, '\x7f'), x)) == errc::protocol_error);
  // a frame of another type
  auto frame = to_wire(commit_done_msg{sample_header(), caf::error{}});
  CHECK(code_of(from_wire(frame, x)) == errc::protocol_error);
  CHECK_FALSE(message_to_wire(caf::make_message(1, 2)));
}

TEST_CASE("checkpoint failures name the step and every failing rank",
          "[messages]") {
  auto err = sample_error();
  CHECK(code_of(err) == errc::checkpoint_failed);
  CHECK(context_of(err)
        == "save 42 failed in step write: rank 1: dcpp::io_error: disk full; "
           "rank 3: dcpp::timeout: late");
  auto parsed = parse_checkpoint_failure(err);
  REQUIRE(parsed);
  CHECK(parsed->op == "save 42");
  CHECK(parsed->step == "write");
  REQUIRE(parsed->failures.size() == 2);
  CHECK(parsed->failures.at(1) == "dcpp::io_error: disk full");
  CHECK(parsed->failures.at(3) == "dcpp::timeout: late");
  CHECK_FALSE(parse_checkpoint_failure(make_error(errc::timeout, "x")));
}

TEST_CASE("the system config renders dcpp errors", "[messages]") {
  system_config cfg;
  caf::actor_system sys{cfg};
  CHECK(sys.render(make_error(errc::missing_key, "model.w"))
        == "dcpp::missing_key: model.w");
}
