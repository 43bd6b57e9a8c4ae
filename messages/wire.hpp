#pragma once

// The wire encoding of the coordinator <-> rank messages, for a transport
// between processes (issue 5: ZeroMQ). A frame is one tag byte followed by
// the cereal portable-binary encoding of the message; every message begins
// with its `envelope`, so a bridge can route a frame (`envelope_from_wire`)
// without knowing the message type, and turn it into a CAF message for the
// local actor (`message_from_wire`).

#include "messages/messages.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/message.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dcpp {

/// The first byte of every frame.
enum class wire_tag : uint8_t {
  local_save_plan = 1,
  global_save_step = 2,
  global_save_step_done = 3,
  central_save_plan = 4,
  write_done = 5,
  commit = 6,
  commit_done = 7,
  local_load_plan = 8,
  global_load_step = 9,
  global_load_step_done = 10,
  central_load_plan = 11,
  read_done = 12,
  op_outcome = 13,
};

std::string to_string(wire_tag x);

template <class T>
struct wire_tag_of;

#define DCPP_WIRE_TAG(type, tag)                                               \
  template <>                                                                  \
  struct wire_tag_of<type> {                                                   \
    static constexpr wire_tag value = wire_tag::tag;                           \
  };

DCPP_WIRE_TAG(local_save_plan_msg, local_save_plan)
DCPP_WIRE_TAG(global_save_step_msg, global_save_step)
DCPP_WIRE_TAG(global_save_step_done_msg, global_save_step_done)
DCPP_WIRE_TAG(central_save_plan_msg, central_save_plan)
DCPP_WIRE_TAG(write_done_msg, write_done)
DCPP_WIRE_TAG(commit_msg, commit)
DCPP_WIRE_TAG(commit_done_msg, commit_done)
DCPP_WIRE_TAG(local_load_plan_msg, local_load_plan)
DCPP_WIRE_TAG(global_load_step_msg, global_load_step)
DCPP_WIRE_TAG(global_load_step_done_msg, global_load_step_done)
DCPP_WIRE_TAG(central_load_plan_msg, central_load_plan)
DCPP_WIRE_TAG(read_done_msg, read_done)
DCPP_WIRE_TAG(op_outcome_msg, op_outcome)

#undef DCPP_WIRE_TAG

// Encoders and decoders, one per message type (defined in messages.cpp so
// that cereal's archives are compiled once).

std::string to_wire(const local_save_plan_msg& x);
std::string to_wire(const global_save_step_msg& x);
std::string to_wire(const global_save_step_done_msg& x);
std::string to_wire(const central_save_plan_msg& x);
std::string to_wire(const write_done_msg& x);
std::string to_wire(const commit_msg& x);
std::string to_wire(const commit_done_msg& x);
std::string to_wire(const local_load_plan_msg& x);
std::string to_wire(const global_load_step_msg& x);
std::string to_wire(const global_load_step_done_msg& x);
std::string to_wire(const central_load_plan_msg& x);
std::string to_wire(const read_done_msg& x);
std::string to_wire(const op_outcome_msg& x);

/// Decodes a frame into `out`. Fails with `errc::protocol_error` if the tag
/// names another type, or with `errc::corrupt_item` if the bytes do not
/// decode (truncated, garbage).
caf::error from_wire(const std::string& frame, local_save_plan_msg& out);
caf::error from_wire(const std::string& frame, global_save_step_msg& out);
caf::error from_wire(const std::string& frame, global_save_step_done_msg& out);
caf::error from_wire(const std::string& frame, central_save_plan_msg& out);
caf::error from_wire(const std::string& frame, write_done_msg& out);
caf::error from_wire(const std::string& frame, commit_msg& out);
caf::error from_wire(const std::string& frame, commit_done_msg& out);
caf::error from_wire(const std::string& frame, local_load_plan_msg& out);
caf::error from_wire(const std::string& frame, global_load_step_msg& out);
caf::error from_wire(const std::string& frame, global_load_step_done_msg& out);
caf::error from_wire(const std::string& frame, central_load_plan_msg& out);
caf::error from_wire(const std::string& frame, read_done_msg& out);
caf::error from_wire(const std::string& frame, op_outcome_msg& out);

/// The tag of a frame (`errc::protocol_error` for an empty frame or an
/// unknown tag).
caf::expected<wire_tag> wire_tag_from_wire(const std::string& frame);

/// The envelope of any frame, for routing.
caf::expected<envelope> envelope_from_wire(const std::string& frame);

/// Decodes any frame into a CAF message holding the typed message, ready to
/// be sent to a local coordinator or rank agent.
caf::expected<caf::message> message_from_wire(const std::string& frame);

/// The fingerprint of a local save plan in the plan cache: xxHash64 of its
/// wire encoding.
uint64_t plan_fingerprint(const save_plan& plan);

/// The key of a set of plans in the plan cache: xxHash64 of every rank's
/// fingerprint (index = rank).
uint64_t plans_fingerprint(const std::vector<uint64_t>& fingerprints);

/// Encodes a CAF message that holds exactly one wire message (what a bridge
/// actor receives). Fails with `errc::protocol_error` for anything else.
caf::expected<std::string> message_to_wire(const caf::message& msg);

} // namespace dcpp
