#include "messages/messages.hpp"

#include "core/error.hpp"
#include "messages/cereal_inspect.hpp"
#include "messages/wire.hpp"

#include <caf/make_message.hpp>

#include <cereal/archives/portable_binary.hpp>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

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

// -- bounded input archive ----------------------------------------------------

/// Frames above this size are refused before decoding anything.
constexpr size_t max_frame_size = size_t{64} << 20;

/// Thrown by `bounded_input_archive`; `decode` turns it into
/// `errc::corrupt_item`.
struct wire_decode_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Reads cereal's portable binary encoding from a byte range it never reads
/// past, and never trusts the input for an allocation: every size prefix is
/// checked against the bytes that remain before anything is resized, vectors
/// of non-arithmetic elements grow only as their elements are actually read,
/// bools and enums are read as integers and range-checked. Fields wrapped in
/// `cereal::make_nvp` (a `wire_name` in their `inspect` field list, see
/// `messages/cereal_inspect.hpp`) name themselves in errors.
class bounded_input_archive
  : public cereal::InputArchive<bounded_input_archive,
                                cereal::AllowEmptyClassElision> {
public:
  bounded_input_archive(const char* first, const char* last)
    : InputArchive(this), pos_(first), end_(last) {
    uint8_t little = 0;
    load_binary<1>(&little, 1);
    if (little > 1)
      throw wire_decode_error("invalid endianness flag "
                              + std::to_string(little));
    convert_ = (little == 1)
               != cereal::portable_binary_detail::is_little_endian();
  }

  size_t remaining() const noexcept {
    return static_cast<size_t>(end_ - pos_);
  }

  template <size_t DataSize>
  void load_binary(void* data, size_t size) {
    if (size > remaining())
      throw wire_decode_error("truncated frame: need " + std::to_string(size)
                              + " bytes, " + std::to_string(remaining())
                              + " left");
    std::memcpy(data, pos_, size);
    pos_ += size;
    if (convert_ && DataSize > 1) {
      auto ptr = static_cast<uint8_t*>(data);
      for (size_t i = 0; i + DataSize <= size; i += DataSize)
        cereal::portable_binary_detail::swap_bytes<DataSize>(ptr + i);
    }
  }

  /// Checks a size prefix of `count` elements of at least `min_bytes` bytes
  /// each against the bytes that remain.
  void check_size(uint64_t count, size_t min_bytes) const {
    if (min_bytes == 0)
      min_bytes = 1;
    if (count > remaining() / min_bytes)
      throw wire_decode_error("size prefix " + std::to_string(count)
                              + " exceeds the " + std::to_string(remaining())
                              + " bytes left" + field_suffix());
  }

  /// " in field F" for the innermost named field being read, if any.
  std::string field_suffix() const {
    if (fields_.empty())
      return {};
    return std::string{" in field "} + fields_.back();
  }

  void push_field(const char* name) {
    fields_.push_back(name);
  }

  void pop_field() {
    fields_.pop_back();
  }

private:
  const char* pos_;
  const char* end_;
  bool convert_ = false;
  std::vector<const char*> fields_;
};

} // namespace
} // namespace dcpp

namespace cereal::traits::detail {

// Pairs the archive with its output counterpart for cereal's trait checks.
template <>
struct get_output_from_input<dcpp::bounded_input_archive> {
  using type = cereal::PortableBinaryOutputArchive;
};

} // namespace cereal::traits::detail

namespace dcpp {
namespace {

template <class T>
std::enable_if_t<std::is_arithmetic<T>::value && !std::is_same<T, bool>::value>
CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, T& x) {
  ar.template load_binary<sizeof(T)>(&x, sizeof(T));
}

void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, bool& x) {
  uint8_t raw = 0;
  ar.load_binary<1>(&raw, 1);
  if (raw > 1)
    throw wire_decode_error("invalid bool value " + std::to_string(raw)
                            + ar.field_suffix());
  x = raw != 0;
}

// The largest valid value of each enum that crosses the wire.
constexpr int max_value(dtype) {
  return static_cast<int>(dtype::num_values) - 1;
}
constexpr int max_value(memory_format) {
  return static_cast<int>(memory_format::preserve);
}
constexpr int max_value(item_kind) {
  return static_cast<int>(item_kind::bytes);
}
constexpr int max_value(write_item_type) {
  return static_cast<int>(write_item_type::bytes);
}
constexpr int max_value(load_item_type) {
  return static_cast<int>(load_item_type::bytes);
}
constexpr int max_value(op_kind) {
  return static_cast<int>(op_kind::load);
}

/// Enums (cereal loads them through their underlying type, see
/// cereal/types/common.hpp; this overload is the more specialized one).
template <class T>
std::enable_if_t<std::is_enum<std::decay_t<T>>::value>
CEREAL_LOAD_MINIMAL_FUNCTION_NAME(
  const bounded_input_archive& ar, T&& x,
  const std::underlying_type_t<std::decay_t<T>>& raw) {
  using enum_type = std::decay_t<T>;
  static_assert(std::is_unsigned<std::underlying_type_t<enum_type>>::value,
                "wire enums must have an unsigned underlying type");
  if (static_cast<uint64_t>(raw)
      > static_cast<uint64_t>(max_value(enum_type{})))
    throw wire_decode_error("invalid enum value " + std::to_string(raw)
                            + ar.field_suffix());
  x = static_cast<enum_type>(raw);
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar,
                               cereal::NameValuePair<T>& x) {
  ar.push_field(x.name);
  ar(x.value);
  ar.pop_field();
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar,
                               cereal::SizeTag<T>& x) {
  ar(x.size);
  // Every element takes at least one byte; containers check more precisely.
  ar.check_size(static_cast<uint64_t>(x.size), 1);
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar,
                               cereal::BinaryData<T>& x) {
  using elem = std::remove_pointer_t<T>;
  ar.template load_binary<sizeof(elem)>(x.data, static_cast<size_t>(x.size));
}

/// Vectors: arithmetic elements are checked against their encoded size and
/// read in one go; any other element type grows the vector one decoded
/// element at a time, so a lying size prefix cannot allocate more than the
/// frame holds.
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar,
                               std::vector<T, A>& xs) {
  cereal::size_type n = 0;
  ar(cereal::make_size_tag(n));
  xs.clear();
  if constexpr (std::is_arithmetic<T>::value && !std::is_same<T, bool>::value) {
    ar.check_size(n, sizeof(T));
    xs.resize(static_cast<size_t>(n));
    if (n > 0)
      ar.template load_binary<sizeof(T)>(xs.data(),
                                         static_cast<size_t>(n) * sizeof(T));
  } else {
    xs.reserve(static_cast<size_t>(std::min<cereal::size_type>(n, 64)));
    for (cereal::size_type i = 0; i < n; ++i) {
      T x{};
      ar(x);
      xs.push_back(std::move(x));
    }
  }
}

template <class A>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar,
                               std::vector<bool, A>& xs) {
  cereal::size_type n = 0;
  ar(cereal::make_size_tag(n));
  xs.clear();
  for (cereal::size_type i = 0; i < n; ++i) {
    bool x = false;
    ar(x);
    xs.push_back(x);
  }
}

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
  if (frame.size() > max_frame_size)
    return make_error(errc::protocol_error, "frame of "
                                              + std::to_string(frame.size())
                                              + " bytes exceeds the maximum of "
                                              + std::to_string(max_frame_size));
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
    bounded_input_archive ar{frame.data() + 1, frame.data() + frame.size()};
    ar(out);
    if (ar.remaining() != 0)
      throw wire_decode_error(std::to_string(ar.remaining())
                              + " trailing bytes");
  } catch (const std::exception& ex) {
    return make_error(errc::corrupt_item, "cannot decode " + to_string(*tag)
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

uint64_t plan_fingerprint(const save_plan& plan) {
  std::ostringstream out{std::ios::binary};
  {
    cereal::PortableBinaryOutputArchive ar{out};
    ar(const_cast<save_plan&>(plan));
  }
  auto bytes = std::move(out).str();
  return XXH64(bytes.data(), bytes.size(), 0);
}

uint64_t plans_fingerprint(const std::vector<uint64_t>& fingerprints) {
  return XXH64(fingerprints.data(), fingerprints.size() * sizeof(uint64_t), 0);
}

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
    bounded_input_archive ar{frame.data() + 1, frame.data() + frame.size()};
    ar(hdr);
  } catch (const std::exception& ex) {
    return make_error(errc::corrupt_item, "cannot decode the envelope of a "
                                            + to_string(*tag)
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
    case wire_tag::write_done: return decode_message<write_done_msg>(frame);
    case wire_tag::commit: return decode_message<commit_msg>(frame);
    case wire_tag::commit_done: return decode_message<commit_done_msg>(frame);
    case wire_tag::local_load_plan:
      return decode_message<local_load_plan_msg>(frame);
    case wire_tag::global_load_step:
      return decode_message<global_load_step_msg>(frame);
    case wire_tag::global_load_step_done:
      return decode_message<global_load_step_done_msg>(frame);
    case wire_tag::central_load_plan:
      return decode_message<central_load_plan_msg>(frame);
    case wire_tag::read_done: return decode_message<read_done_msg>(frame);
    case wire_tag::op_outcome: return decode_message<op_outcome_msg>(frame);
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
