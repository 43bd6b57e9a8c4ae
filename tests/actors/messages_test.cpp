// Every wire message through both encodings: CAF's binary serializer
// (inspect) and the cereal wire codec of the future ZeroMQ transport.

#include "messages/wire.hpp"

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
  return make_checkpoint_failure(
    {"save 42", "write",
     {{1, make_error(errc::io_error, "disk full")},
      {3, make_error(errc::timeout, "late")}}});
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
  auto failure = checkpoint_failure_of(err);
  REQUIRE(failure);
  CHECK(failure->op == "save 42");
  CHECK(failure->step == "write");
  REQUIRE(failure->failures.size() == 2);
  CHECK(code_of(failure->failures.at(1)) == errc::io_error);
  CHECK(describe(failure->failures.at(1)) == "dcpp::io_error: disk full");
  CHECK(code_of(failure->failures.at(3)) == errc::timeout);
  CHECK(describe(failure->failures.at(3)) == "dcpp::timeout: late");
  CHECK_FALSE(checkpoint_failure_of(make_error(errc::timeout, "x")));
}

TEST_CASE("the system config renders dcpp errors", "[messages]") {
  system_config cfg;
  caf::actor_system sys{cfg};
  CHECK(sys.render(make_error(errc::missing_key, "model.w"))
        == "dcpp::missing_key: model.w");
}

// -- hardening of the wire decoder (fuzzer findings) --------------------------

namespace {

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

} // namespace

TEST_CASE("size prefixes larger than the frame are refused before any "
          "allocation",
          "[messages][wire]") {
  // A 31-byte write_done frame whose vector claims ~2.6 GB.
  auto huge_vector = from_hex("0501010000000003000000000000000100000000000000"
                              "0000000100000000");
  auto msg = message_from_wire(huge_vector);
  REQUIRE_FALSE(msg);
  CHECK(code_of(msg.error()) == errc::corrupt_item);
  CHECK(context_of(msg.error()).find("size prefix") != std::string::npos);
  // A 32-byte frame whose string claims 1 GB.
  auto huge_string = from_hex("0c0101000000000300000000000000010000000000000"
                              "0010000004000000000");
  msg = message_from_wire(huge_string);
  REQUIRE_FALSE(msg);
  CHECK(code_of(msg.error()) == errc::corrupt_item);
  // Every truncation of a valid frame fails cleanly; trailing bytes too.
  auto frame = to_wire(local_save_plan_msg{sample_header(), 10,
                                           sample_save_plan(), caf::error{}});
  for (size_t n = 1; n < frame.size(); ++n) {
    local_save_plan_msg x;
    CHECK(code_of(from_wire(frame.substr(0, n), x)) == errc::corrupt_item);
  }
  local_save_plan_msg x;
  CHECK(code_of(from_wire(frame + "x", x)) == errc::corrupt_item);
  CHECK_FALSE(from_wire(frame, x));
}

TEST_CASE("frames beyond the maximum frame size are refused up front",
          "[messages][wire]") {
  auto frame = to_wire(commit_done_msg{sample_header(), caf::error{}});
  frame.resize((size_t{64} << 20) + 1, '\0');
  auto msg = message_from_wire(frame);
  REQUIRE_FALSE(msg);
  CHECK(code_of(msg.error()) == errc::protocol_error);
  CHECK_FALSE(envelope_from_wire(frame));
}

TEST_CASE("bools and enums out of range are refused, naming the field",
          "[messages][wire]") {
  // The fuzzer's frame: a bool of 13.
  auto bad_bool = from_hex(
    "0101010000000003000000000000000100000000000000e8030000000000000000000000"
    "000000000000000000000000000000000000000d00000000000000000000000000000000"
    "00");
  auto msg = message_from_wire(bad_bool);
  REQUIRE_FALSE(msg);
  CHECK(code_of(msg.error()) == errc::corrupt_item);
  CHECK(context_of(msg.error()).find("invalid bool value 13 in field "
                                     "save_plan.usable")
        != std::string::npos);
  // Enums: the op kind of the envelope (tag, endianness flag, version u32,
  // then op.kind) and the type of a write item.
  auto frame = to_wire(local_save_plan_msg{sample_header(), 10,
                                           sample_save_plan(), caf::error{}});
  auto bad_kind = frame;
  bad_kind[6] = '\x07';
  msg = message_from_wire(bad_kind);
  REQUIRE_FALSE(msg);
  CHECK(code_of(msg.error()) == errc::corrupt_item);
  CHECK(context_of(msg.error()).find("invalid enum value 7")
        != std::string::npos);
  auto hdr = envelope_from_wire(bad_kind);
  CHECK_FALSE(hdr);
  // write_item.type: flip the encoded `shard` (1) of the first item to 9.
  auto plan = sample_save_plan();
  plan.items[0].type = write_item_type::tensor;
  auto with_tensor = to_wire(local_save_plan_msg{sample_header(), 10, plan,
                                                 caf::error{}});
  REQUIRE(with_tensor.size() == frame.size());
  size_t diff = 0;
  for (size_t i = 0; i < frame.size(); ++i)
    if (frame[i] != with_tensor[i])
      diff = i;
  REQUIRE(diff > 0);
  auto bad_type = frame;
  bad_type[diff] = '\x09';
  msg = message_from_wire(bad_type);
  REQUIRE_FALSE(msg);
  CHECK(context_of(msg.error()).find("in field write_item.type")
        != std::string::npos);
}

TEST_CASE("errors whose category is no atom's text are refused",
          "[messages][wire]") {
  // The fuzzer's frame: category "\0", code 13.
  auto nul_category = from_hex(
    "0101010000000003000000000000000100000000000000e8030000000000000000000000"
    "00000000000000000000000000000000000001010100000000000000000d000000000000"
    "0072616e6b2031206661696c6564");
  auto msg = message_from_wire(nul_category);
  REQUIRE_FALSE(msg);
  CHECK(code_of(msg.error()) == errc::corrupt_item);
  // Built by hand: code, category, context after an op_outcome's envelope.
  auto with_category = [](const std::string& category, uint8_t code) {
    op_outcome_msg out{sample_header(), make_error(errc::timeout, "ctx"),
                       metadata{}};
    auto frame = to_wire(out);
    auto pos = frame.find("dcpp");
    REQUIRE(pos != std::string::npos);
    // u64 size of the category precedes it, the code precedes that.
    std::string len(8, '\0');
    len[0] = static_cast<char>(category.size());
    return frame.substr(0, pos - 9) + static_cast<char>(code) + len
           + category + frame.substr(pos + 4);
  };
  op_outcome_msg in;
  CHECK_FALSE(from_wire(with_category("dcpp", 1), in));
  CHECK(code_of(in.error) == errc{1});
  for (auto category : {std::string(1, '\0'), std::string{}, std::string{"a.b"},
                        std::string{"elevenchars"}}) {
    CAPTURE(category);
    CHECK(code_of(from_wire(with_category(category, 1), in))
          == errc::corrupt_item);
  }
  // Code 0 means "no error": nothing else may come with it.
  CHECK(code_of(from_wire(with_category("dcpp", 0), in))
        == errc::corrupt_item);
}
