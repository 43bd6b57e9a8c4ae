// Every wire message through both encodings: CAF's binary serializer
// (inspect) and the cereal wire codec of the future ZeroMQ transport.

#include "actors/system.hpp"
#include "core/error.hpp"
#include "messages/wire.hpp"

#include <caf/all.hpp>

#include <catch2/catch.hpp>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
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

// The samples set every field off its default (every bool true where it
// defaults to false and vice versa, every enum off zero). The pinned wire
// frames at the end of this file are made of them: a change here means new
// files in tests/data/wire.

tensor_properties sample_properties() {
  tensor_properties x;
  x.type = dtype::bfloat16;
  x.layout = "sparse_coo";
  x.requires_grad = true;
  x.format = memory_format::channels_last;
  x.pin_memory = true;
  return x;
}

save_plan sample_save_plan(int32_t rank = 3) {
  save_plan plan;
  write_item shard;
  shard.index = metadata_index{"model.layers.0.w", {-4, 1}, 7};
  shard.type = write_item_type::shard;
  shard.tensor_data.chunk = {{4, 0}, {4, 8}};
  shard.tensor_data.properties = sample_properties();
  shard.tensor_data.size = {16, 8};
  shard.bytes_size = 0x0102030405060708;
  plan.items.push_back(shard);
  write_item bytes;
  bytes.index = metadata_index{"optim.step"};
  bytes.type = write_item_type::bytes;
  bytes.bytes_size = 17;
  plan.items.push_back(bytes);
  plan.storage_data = "__" + std::to_string(rank) + "_";
  plan.planner_data = "mapping";
  plan.usable = false;
  return plan;
}

load_plan sample_load_plan() {
  load_plan plan;
  read_item item;
  item.type = load_item_type::bytes;
  item.dest_index = metadata_index{"model.w", {0, 0}, 0};
  item.dest_offsets = {1, 0};
  item.storage_index = metadata_index{"model.w", {4, 0}, 1};
  item.storage_offsets = {0, 2};
  item.lengths = {3, 6};
  plan.items.push_back(item);
  plan.items.push_back(read_item{});
  plan.storage_data = "s";
  plan.planner_data = "p";
  return plan;
}

metadata sample_metadata() {
  metadata md;
  tensor_storage_metadata t;
  t.properties = sample_properties();
  t.size = {16, 8};
  t.chunks = {{{0, 0}, {4, 8}}, {{4, 0}, {12, 8}}};
  item_metadata im;
  im.tensor = t;
  md.state_dict_metadata["model.w"] = im;
  md.state_dict_metadata["optim.step"] = item_metadata::bytes();
  md.planner_data["optim.step"] = {"optim", "step"};
  md.planner_data["model.w"] = {"model", path_element::position(7), "w"};
  md.storage_data[metadata_index{"model.w", {4, 0}, 3}] = storage_info{
    "__1_0.distcp", 128, 0xfedcba9876543210, "xxh64:0123456789abcdef"};
  md.storage_data[metadata_index{"optim.step"}] = storage_info{"__0_0.distcp",
                                                               0, 8, ""};
  md.version = "1.0.0";
  md.save_id = "id";
  md.checkpoint_id = "/tmp/x";
  return md;
}

std::vector<write_result> sample_results(int32_t rank = 1) {
  write_result res;
  res.index = metadata_index{"model.w", {4, 0}, 1};
  res.size_in_bytes = 4096;
  res.storage_data = storage_info{"__" + std::to_string(rank) + "_0.distcp",
                                  128, 4096, "xxh64:00000000000000ff"};
  return {res, write_result{}};
}

checkpoint_failure sample_failure() {
  checkpoint_failure x;
  x.op = to_string(op_id{op_kind::save, 42});
  x.step = "write";
  x.failures[1] = make_error(errc::io_error, "disk full");
  x.failures[3] = make_error(errc::timeout, "late");
  return x;
}

rank_report sample_rank_report() {
  rank_report x;
  x.in_progress = true;
  x.bytes = 0x0102030405060708;
  x.bytes_planned = 0x1112131415161718;
  x.files = 3;
  x.plan_us = -5;
  x.data_us = 1234567;
  return x;
}

op_report sample_op_report() {
  op_report x;
  x.bytes = 1 << 30;
  x.files = 4;
  x.ranks = 2;
  x.plan_us = 100;
  x.data_us = 2000000;
  x.commit_us = 30000;
  x.total_us = 2500000;
  x.plans_cached = true;
  return x;
}

caf::error sample_error() {
  return make_checkpoint_failure(sample_failure());
}

/// The error of a failed op_outcome_msg as it arrives over the wire: the
/// wire carries an error's context as text, the data travels in `failure`.
caf::error sample_error_on_the_wire() {
  return make_error(errc::checkpoint_failed, to_string(sample_failure()));
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
  // wire_name annotations name fields for the wire decoder only.
  CHECK(caf::deep_to_string(x).find("save_plan.usable") == std::string::npos);
}

} // namespace

TEST_CASE("every wire message round-trips through both encodings",
          "[messages]") {
  auto hdr = sample_header();
  auto lhdr = sample_header(op_kind::load);
  round_trip(local_save_plan_msg{hdr, 1500, sample_save_plan(), caf::error{}});
  round_trip(local_save_plan_msg{hdr, 1500, save_plan{},
                                 make_error(errc::io_error, "/x: EIO")});
  round_trip(global_save_step_msg{
    hdr, std::vector<save_plan>{sample_save_plan(), save_plan{}}, 7});
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
  round_trip(
    global_load_step_done_msg{lhdr, {sample_load_plan()}, caf::error{}});
  round_trip(central_load_plan_msg{lhdr, sample_load_plan()});
  round_trip(read_done_msg{lhdr, make_error(errc::checksum_mismatch, "k")});
  round_trip(
    op_outcome_msg{hdr, caf::error{}, sample_metadata(), checkpoint_failure{}});
  round_trip(op_outcome_msg{hdr, sample_error_on_the_wire(), metadata{},
                            sample_failure()});
  round_trip(write_done_msg{hdr, {}, caf::error{}, sample_rank_report()});
  round_trip(read_done_msg{lhdr, caf::error{}, sample_rank_report()});
  round_trip(op_outcome_msg{hdr, caf::error{}, sample_metadata(),
                            checkpoint_failure{}, sample_op_report()});
}

TEST_CASE("errors cross the wire with code, category and context",
          "[messages]") {
  auto err = sample_error();
  op_outcome_msg out{sample_header(), err, metadata{}, checkpoint_failure{}};
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
  REQUIRE(failure != nullptr);
  CHECK(failure->op == "save 42");
  CHECK(failure->step == "write");
  REQUIRE(failure->failures.size() == 2);
  CHECK(failure->failures.at(1) == make_error(errc::io_error, "disk full"));
  CHECK(failure->failures.at(3) == make_error(errc::timeout, "late"));
  CHECK(checkpoint_failure_of(make_error(errc::timeout, "x")) == nullptr);
}

TEST_CASE("an op outcome's failure map crosses the wire rank by rank",
          "[messages][wire]") {
  auto failure = sample_failure();
  op_outcome_msg out{sample_header(), make_checkpoint_failure(failure),
                     metadata{}, failure};
  op_outcome_msg in;
  REQUIRE_FALSE(from_wire(to_wire(out), in));
  CHECK(code_of(in.error) == errc::checkpoint_failed);
  CHECK(context_of(in.error) == to_string(failure));
  CHECK(in.failure.op == "save 42");
  CHECK(in.failure.step == "write");
  REQUIRE(in.failure.failures.size() == 2);
  const auto& rank1 = in.failure.failures.at(1);
  const auto& rank3 = in.failure.failures.at(3);
  CHECK(code_of(rank1) == errc::io_error);
  CHECK(context_of(rank1) == "disk full");
  CHECK(code_of(rank3) == errc::timeout);
  CHECK(context_of(rank3) == "late");
  CHECK(rank1 == failure.failures.at(1));
  CHECK(rank3 == failure.failures.at(3));
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
  auto frame = to_wire(
    local_save_plan_msg{sample_header(), 10, sample_save_plan(), caf::error{}});
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
  CHECK(context_of(msg.error())
          .find("invalid bool value 13 in field "
                "save_plan.usable")
        != std::string::npos);
  // Enums: the op kind of the envelope (tag, endianness flag, version u32,
  // then op.kind) and the type of a write item.
  auto frame = to_wire(
    local_save_plan_msg{sample_header(), 10, sample_save_plan(), caf::error{}});
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
  auto with_tensor = to_wire(
    local_save_plan_msg{sample_header(), 10, plan, caf::error{}});
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
                       metadata{}, checkpoint_failure{}};
    auto frame = to_wire(out);
    auto pos = frame.find("dcpp");
    REQUIRE(pos != std::string::npos);
    // u64 size of the category precedes it, the code precedes that.
    std::string len(8, '\0');
    len[0] = static_cast<char>(category.size());
    return frame.substr(0, pos - 9) + static_cast<char>(code) + len + category
           + frame.substr(pos + 4);
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
  CHECK(code_of(from_wire(with_category("dcpp", 0), in)) == errc::corrupt_item);
}

// -- the encoding is pinned ---------------------------------------------------

// One message of every wire type, every field set (the samples above, errors
// with dcpp, CAF and non-text contexts), encoded and compared byte for byte
// with tests/data/wire/<tag>.hex. Those files were produced by the encoder
// as it was when protocol version 2 was introduced, when inspect and cereal
// still had a field list each, and regenerated for version 3 (data-step
// results gained a rank_report, outcomes an op_report), for version 4
// (the plan cache: local save plans gained a fingerprint and a
// plan_cached flag, the global save step a plans key, op_report a
// plans_cached flag) and for version 5 (flatten paths of path_elements
// with a list-position flag); a change to any
// field list, order or encoding shows up here. A deliberate
// change of the wire format comes with a new `protocol_version`; regenerate
// the files then with DCPP_WIRE_PIN_WRITE=1 set while running this test.

namespace {

/// A CAF error whose context is not text (the wire renders it).
caf::error non_text_error() {
  return caf::error{7, caf::atom("custom"), caf::make_message(int32_t{42})};
}

/// Every wire message, fully populated, with its tag's name.
std::vector<std::pair<std::string, std::string>> pinned_frames() {
  auto hdr = sample_header();
  hdr.from = 0x01020304;
  hdr.to = -2;
  hdr.op.seq = 0x1122334455667788;
  auto lhdr = hdr;
  lhdr.op.kind = op_kind::load;
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](const auto& x) {
    using type = std::decay_t<decltype(x)>;
    out.emplace_back(to_string(wire_tag_of<type>::value), to_wire(x));
  };
  add(local_save_plan_msg{hdr, -1500, sample_save_plan(3),
                          make_error(errc::io_error, "/x: EIO"),
                          0x0123456789abcdef, true});
  add(global_save_step_msg{
    hdr, std::vector<save_plan>{sample_save_plan(0), save_plan{}},
    0xfedcba9876543210});
  add(global_save_step_done_msg{hdr,
                                global_save_plan{{sample_save_plan(0),
                                                  sample_save_plan(1)},
                                                 sample_metadata()},
                                caf::make_error(caf::sec::request_timeout)});
  add(central_save_plan_msg{hdr, sample_save_plan(2)});
  add(write_done_msg{hdr, sample_results(3),
                     make_error(errc::storage_failure, "x"),
                     sample_rank_report()});
  add(commit_msg{hdr,
                 sample_metadata(),
                 {sample_results(0), {}, sample_results(2)}});
  add(commit_done_msg{hdr, non_text_error()});
  add(local_load_plan_msg{lhdr, 10, sample_load_plan(),
                          make_error(errc::missing_key, "model.w")});
  add(global_load_step_msg{lhdr, {sample_load_plan(), load_plan{}}});
  add(global_load_step_done_msg{lhdr,
                                {sample_load_plan()},
                                make_error(errc::corrupt_item, "k")});
  add(central_load_plan_msg{lhdr, sample_load_plan()});
  add(read_done_msg{lhdr, make_error(errc::checksum_mismatch, "k"),
                    sample_rank_report()});
  add(op_outcome_msg{hdr, sample_error(), sample_metadata(), sample_failure(),
                     sample_op_report()});
  return out;
}

std::string to_hex(const std::string& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes.size(); ++i) {
    auto c = static_cast<unsigned char>(bytes[i]);
    out += digits[c >> 4];
    out += digits[c & 0x0f];
    if (i % 32 == 31 || i + 1 == bytes.size())
      out += '\n';
  }
  return out;
}

std::string pinned_path(const std::string& name) {
  return std::string{DCPP_TEST_DATA_DIR} + "/wire/" + name + ".hex";
}

/// The bytes of a pinned file (hex, whitespace ignored).
std::string read_pinned(const std::string& name) {
  std::ifstream in{pinned_path(name)};
  std::string hex;
  for (char c; in.get(c);)
    if (!std::isspace(static_cast<unsigned char>(c)))
      hex += c;
  return from_hex(hex);
}

} // namespace

TEST_CASE("the wire encoding of every message type is pinned",
          "[messages][wire]") {
  auto frames = pinned_frames();
  REQUIRE(frames.size() == static_cast<size_t>(wire_tag::op_outcome));
  if (std::getenv("DCPP_WIRE_PIN_WRITE") != nullptr) {
    for (const auto& [name, frame] : frames) {
      std::ofstream out{pinned_path(name)};
      out << to_hex(frame);
      REQUIRE(out.good());
    }
    WARN("rewrote the pinned wire frames in tests/data/wire");
  }
  for (const auto& [name, frame] : frames) {
    CAPTURE(name);
    auto pinned = read_pinned(name);
    REQUIRE_FALSE(pinned.empty());
    CHECK(to_hex(frame) == to_hex(pinned));
    // The pinned bytes decode to the same message and encode back to
    // themselves.
    auto msg = message_from_wire(pinned);
    REQUIRE(msg);
    auto again = message_to_wire(*msg);
    REQUIRE(again);
    CHECK(to_hex(*again) == to_hex(pinned));
  }
}
