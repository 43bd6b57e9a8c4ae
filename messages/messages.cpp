#include "messages/messages.hpp"
#include "messages/wire.hpp"

#include "core/error.hpp"

#include <caf/make_message.hpp>

#include <cereal/archives/portable_binary.hpp>

#include <exception>
#include <sstream>
#include <utility>

namespace dcpp {

std::string to_string(op_kind x) {
  switch (x) {
    case op_kind::save: return "save";
    case op_kind::load: return "load";
  }
  return "<invalid op_kind " + std::to_string(static_cast<int>(x)) + ">";
}

std::string to_string(const op_id& x) {
  return to_string(x.kind) + " " + std::to_string(x.seq);
}

std::string to_string(const envelope& x) {
  return to_string(x.op) + " (v" + std::to_string(x.version) + ", rank "
         + std::to_string(x.from) + " -> " + std::to_string(x.to) + ")";
}

std::string to_string(wire_tag x) {
  switch (x) {
    case wire_tag::local_save_plan: return "local_save_plan";
    case wire_tag::global_save_step: return "global_save_step";
    case wire_tag::global_save_step_done: return "global_save_step_done";
    case wire_tag::central_save_plan: return "central_save_plan";
    case wire_tag::write_done: return "write_done";
    case wire_tag::commit: return "commit";
    case wire_tag::commit_done: return "commit_done";
    case wire_tag::local_load_plan: return "local_load_plan";
    case wire_tag::global_load_step: return "global_load_step";
    case wire_tag::global_load_step_done: return "global_load_step_done";
    case wire_tag::central_load_plan: return "central_load_plan";
    case wire_tag::read_done: return "read_done";
    case wire_tag::op_outcome: return "op_outcome";
  }
  return "<invalid wire_tag " + std::to_string(static_cast<int>(x)) + ">";
}

namespace {

template <class T>
std::string encode(const T& x) {
  std::ostringstream out{std::ios::binary};
  out.put(static_cast<char>(wire_tag_of<T>::value));
  {
    cereal::PortableBinaryOutputArchive ar{out};
    ar(const_cast<T&>(x));
  }
  return std::move(out).str();
}

caf::expected<wire_tag> tag_of(const std::string& frame) {
  if (frame.empty())
    return make_error(errc::protocol_error, "empty frame");
  auto raw = static_cast<uint8_t>(frame[0]);
  if (raw < static_cast<uint8_t>(wire_tag::local_save_plan)
      || raw > static_cast<uint8_t>(wire_tag::op_outcome))
    return make_error(errc::protocol_error,
                      "unknown wire tag " + std::to_string(raw));
  return static_cast<wire_tag>(raw);
}

template <class T>
caf::error decode(const std::string& frame, T& out) {
  auto tag = tag_of(frame);
  if (!tag)
    return std::move(tag.error());
  if (*tag != wire_tag_of<T>::value)
    return make_error(errc::protocol_error,
                      "expected a " + to_string(wire_tag_of<T>::value)
                        + " frame, got " + to_string(*tag));
  try {
    std::istringstream in{frame.substr(1), std::ios::binary};
    cereal::PortableBinaryInputArchive ar{in};
    ar(out);
  } catch (const std::exception& ex) {
    return make_error(errc::corrupt_item, "cannot decode "
                                            + to_string(*tag)
                                            + " frame: " + ex.what());
  }
  return caf::none;
}

template <class T>
caf::expected<caf::message> decode_message(const std::string& frame) {
  T x;
  if (auto err = decode(frame, x))
    return err;
  return caf::make_message(std::move(x));
}

template <class T>
bool try_encode(const caf::message& msg, std::string& out) {
  if (msg.size() != 1 || !msg.match_element<T>(0))
    return false;
  out = encode(msg.get_as<T>(0));
  return true;
}

} // namespace

#define DCPP_WIRE_CODEC(type)                                                  \
  std::string to_wire(const type& x) {                                         \
    return encode(x);                                                          \
  }                                                                            \
  caf::error from_wire(const std::string& frame, type& out) {                  \
    return decode(frame, out);                                                 \
  }

DCPP_WIRE_CODEC(local_save_plan_msg)
DCPP_WIRE_CODEC(global_save_step_msg)
DCPP_WIRE_CODEC(global_save_step_done_msg)
DCPP_WIRE_CODEC(central_save_plan_msg)
DCPP_WIRE_CODEC(write_done_msg)
DCPP_WIRE_CODEC(commit_msg)
DCPP_WIRE_CODEC(commit_done_msg)
DCPP_WIRE_CODEC(local_load_plan_msg)
DCPP_WIRE_CODEC(global_load_step_msg)
DCPP_WIRE_CODEC(global_load_step_done_msg)
DCPP_WIRE_CODEC(central_load_plan_msg)
DCPP_WIRE_CODEC(read_done_msg)
DCPP_WIRE_CODEC(op_outcome_msg)

#undef DCPP_WIRE_CODEC

caf::expected<wire_tag> wire_tag_from_wire(const std::string& frame) {
  return tag_of(frame);
}

caf::expected<envelope> envelope_from_wire(const std::string& frame) {
  auto tag = tag_of(frame);
  if (!tag)
    return std::move(tag.error());
  // Every message starts with its envelope: decode just that prefix.
  envelope hdr;
  try {
    std::istringstream in{frame.substr(1), std::ios::binary};
    cereal::PortableBinaryInputArchive ar{in};
    ar(hdr);
  } catch (const std::exception& ex) {
    return make_error(errc::corrupt_item,
                      "cannot decode the envelope of a " + to_string(*tag)
                        + " frame: " + ex.what());
  }
  return hdr;
}

caf::expected<caf::message> message_from_wire(const std::string& frame) {
  auto tag = tag_of(frame);
  if (!tag)
    return std::move(tag.error());
  switch (*tag) {
    case wire_tag::local_save_plan:
      return decode_message<local_save_plan_msg>(frame);
    case wire_tag::global_save_step:
      return decode_message<global_save_step_msg>(frame);
    case wire_tag::global_save_step_done:
      return decode_message<global_save_step_done_msg>(frame);
    case wire_tag::central_save_plan:
      return decode_message<central_save_plan_msg>(frame);
    case wire_tag::write_done:
      return decode_message<write_done_msg>(frame);
    case wire_tag::commit:
      return decode_message<commit_msg>(frame);
    case wire_tag::commit_done:
      return decode_message<commit_done_msg>(frame);
    case wire_tag::local_load_plan:
      return decode_message<local_load_plan_msg>(frame);
    case wire_tag::global_load_step:
      return decode_message<global_load_step_msg>(frame);
    case wire_tag::global_load_step_done:
      return decode_message<global_load_step_done_msg>(frame);
    case wire_tag::central_load_plan:
      return decode_message<central_load_plan_msg>(frame);
    case wire_tag::read_done:
      return decode_message<read_done_msg>(frame);
    case wire_tag::op_outcome:
      return decode_message<op_outcome_msg>(frame);
  }
  return make_error(errc::protocol_error, "unknown wire tag");
}

caf::expected<std::string> message_to_wire(const caf::message& msg) {
  std::string out;
  if (try_encode<local_save_plan_msg>(msg, out)
      || try_encode<global_save_step_msg>(msg, out)
      || try_encode<global_save_step_done_msg>(msg, out)
      || try_encode<central_save_plan_msg>(msg, out)
      || try_encode<write_done_msg>(msg, out)
      || try_encode<commit_msg>(msg, out)
      || try_encode<commit_done_msg>(msg, out)
      || try_encode<local_load_plan_msg>(msg, out)
      || try_encode<global_load_step_msg>(msg, out)
      || try_encode<global_load_step_done_msg>(msg, out)
      || try_encode<central_load_plan_msg>(msg, out)
      || try_encode<read_done_msg>(msg, out)
      || try_encode<op_outcome_msg>(msg, out))
    return out;
  return make_error(errc::protocol_error,
                    "not a wire message: " + caf::to_string(msg));
}

} // namespace dcpp
