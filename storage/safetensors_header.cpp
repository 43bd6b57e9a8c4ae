#include "storage/safetensors_header.hpp"

#include "core/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <tuple>

namespace dcpp {

namespace {

using json = nlohmann::json;

struct dtype_name {
  dtype type;
  const char* name;
};

constexpr std::array<dtype_name, 11> dtype_names{{
  {dtype::float64, "F64"},
  {dtype::float32, "F32"},
  {dtype::float16, "F16"},
  {dtype::bfloat16, "BF16"},
  {dtype::int64, "I64"},
  {dtype::int32, "I32"},
  {dtype::int16, "I16"},
  {dtype::int8, "I8"},
  {dtype::uint8, "U8"},
  {dtype::boolean, "BOOL"},
  {dtype::complex64, "C64"},
}};

/// SAX events of nlohmann's parser: counts the keys of the top-level
/// object and stops the parse when they exceed the tensor bound (plus one
/// for `__metadata__`). nlohmann's DOM parser with a callback is no
/// substitute: it walks the parent object at every nested object's end,
/// quadratic in the number of tensors.
struct key_counter {
  size_t depth = 0;
  size_t keys = 0;

  bool null() {
    return true;
  }
  bool boolean(bool) {
    return true;
  }
  bool number_integer(json::number_integer_t) {
    return true;
  }
  bool number_unsigned(json::number_unsigned_t) {
    return true;
  }
  bool number_float(json::number_float_t, const std::string&) {
    return true;
  }
  bool string(std::string&) {
    return true;
  }
  bool binary(json::binary_t&) {
    return true;
  }
  bool start_object(size_t) {
    ++depth;
    return true;
  }
  bool key(std::string&) {
    return depth != 1 || ++keys <= safetensors_max_tensors + 1;
  }
  bool end_object() {
    --depth;
    return true;
  }
  bool start_array(size_t) {
    ++depth;
    return true;
  }
  bool end_array() {
    --depth;
    return true;
  }
  bool parse_error(size_t, const std::string&,
                   const nlohmann::detail::exception&) {
    return false;
  }
};

caf::error bad(const std::string& file, const std::string& what) {
  return make_error(errc::corrupt_item, file + ": safetensors header: " + what);
}

} // namespace

caf::expected<std::string> safetensors_dtype_name(dtype x) {
  for (const auto& d : dtype_names)
    if (d.type == x)
      return std::string{d.name};
  // torch 2.x's dtypes (U16, U32, U64, F8_E4M3, F8_E5M2 in safetensors)
  // are not mapped: dcpp's safetensors paths keep no carried dtype.
  if (!has_libtorch_type(x))
    return make_error(errc::unsupported,
                      "dcpp does not write or read " + to_string(x)
                        + " in safetensors files (a torch 2.x dtype)");
  return make_error(errc::unsupported,
                    "safetensors has no dtype for " + to_string(x));
}

caf::expected<dtype> parse_safetensors_dtype(const std::string& name) {
  for (const auto& d : dtype_names)
    if (name == d.name)
      return d.type;
  return make_error(errc::unknown_dtype, "safetensors dtype '"
                                           + name.substr(0, 64)
                                           + "' is not one dcpp holds");
}

caf::expected<uint64_t> safetensors_nbytes(dtype type, const shape_t& shape) {
  uint64_t n = element_size(type);
  for (auto d : shape) {
    if (d < 0)
      return make_error(errc::corrupt_item, "negative dimension");
    auto u = static_cast<uint64_t>(d);
    if (u != 0 && n > std::numeric_limits<uint64_t>::max() / u)
      return make_error(errc::too_large, "tensor size overflows");
    n *= u;
  }
  return n;
}

caf::expected<uint64_t> safetensors_header_length(std::string_view first8,
                                                  uint64_t file_size,
                                                  const std::string& file) {
  if (first8.size() < 8 || file_size < 8)
    return bad(file, "file of " + std::to_string(file_size)
                       + " bytes is too short for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(first8[static_cast<size_t>(i)]);
  if (n > safetensors_max_header)
    return make_error(errc::too_large,
                      file + ": safetensors header length " + std::to_string(n)
                        + " exceeds the limit of "
                        + std::to_string(safetensors_max_header) + " bytes");
  if (n > file_size - 8)
    return bad(file, "header length " + std::to_string(n)
                       + " runs past the end of the file ("
                       + std::to_string(file_size) + " bytes)");
  return n;
}

caf::expected<safetensors_header>
decode_safetensors_header(std::string_view text, uint64_t file_size,
                          const std::string& file) {
  safetensors_header result;
  result.data_start = 8 + text.size();
  if (result.data_start > file_size)
    return bad(file, "header runs past the end of the file");
  auto buffer = file_size - result.data_start;
  // A first pass counts the top-level keys and stops at the first beyond
  // the bound, before a hostile header is built into a document.
  key_counter counter;
  if (!json::sax_parse(text.begin(), text.end(), &counter)
      && counter.keys > safetensors_max_tensors + 1)
    return make_error(errc::too_large,
                      file + ": safetensors header declares more than "
                        + std::to_string(safetensors_max_tensors)
                        + " tensors, the limit");
  auto doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded())
    return bad(file, "not valid JSON");
  if (!doc.is_object())
    return bad(file, "not a JSON object");
  auto declared = doc.size() - doc.count("__metadata__");
  if (declared > safetensors_max_tensors)
    return make_error(errc::too_large,
                      file + ": safetensors header declares "
                        + std::to_string(declared)
                        + " tensors, more than the limit of "
                        + std::to_string(safetensors_max_tensors));
  result.tensors.reserve(declared);
  for (auto& [name, value] : doc.items()) {
    if (name == "__metadata__") {
      if (!value.is_object())
        return bad(file, "__metadata__ is not an object");
      for (auto& [k, v] : value.items()) {
        if (!v.is_string())
          return bad(file, "__metadata__ value of '" + k + "' is not a string");
        result.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    auto where = "tensor '" + name + "': ";
    if (!value.is_object())
      return bad(file, where + "entry is not an object");
    auto dt = value.find("dtype");
    auto shape = value.find("shape");
    auto offsets = value.find("data_offsets");
    if (dt == value.end() || !dt->is_string() || shape == value.end()
        || !shape->is_array() || offsets == value.end() || !offsets->is_array()
        || offsets->size() != 2)
      return bad(file, where
                         + "needs \"dtype\" (string), \"shape\" (array) and "
                           "\"data_offsets\" ([begin, end])");
    safetensors_entry e;
    e.name = name;
    auto type = parse_safetensors_dtype(dt->get<std::string>());
    if (!type)
      return with_context(type.error(), file + ": tensor '" + name + "'");
    e.type = *type;
    if (shape->size() > safetensors_max_rank)
      return make_error(errc::too_large,
                        file + ": safetensors header: " + where + "rank "
                          + std::to_string(shape->size())
                          + " exceeds the limit of "
                          + std::to_string(safetensors_max_rank));
    e.shape.reserve(shape->size());
    for (auto& d : *shape) {
      if (!d.is_number_unsigned()
          || d.get<uint64_t>()
               > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return bad(file, where
                           + "shape holds something other than a "
                             "non-negative integer");
      e.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    }
    for (auto& o : *offsets)
      if (!o.is_number_unsigned())
        return bad(file, where + "data_offsets are not non-negative integers");
    e.begin = (*offsets)[0].get<uint64_t>();
    e.end = (*offsets)[1].get<uint64_t>();
    if (e.begin > e.end)
      return bad(file, where + "data_offsets begin " + std::to_string(e.begin)
                         + " after end " + std::to_string(e.end));
    if (e.end > buffer)
      return bad(file, where + "data_offsets end " + std::to_string(e.end)
                         + " runs past the end of the file (data buffer of "
                         + std::to_string(buffer) + " bytes)");
    auto nbytes = safetensors_nbytes(e.type, e.shape);
    if (!nbytes)
      return bad(file, where + context_of(nbytes.error()));
    if (*nbytes != e.end - e.begin)
      return bad(
        file, where + "data_offsets span " + std::to_string(e.end - e.begin)
                + " bytes, but dtype " + dt->get<std::string>() + " and shape "
                + to_string(e.shape) + " need " + std::to_string(*nbytes));
    result.tensors.push_back(std::move(e));
  }
  std::sort(result.tensors.begin(), result.tensors.end(),
            [](const auto& x, const auto& y) {
              return std::tie(x.begin, x.end) < std::tie(y.begin, y.end);
            });
  // As the reference implementation: tensors tile the buffer exactly.
  uint64_t pos = 0;
  for (const auto& e : result.tensors) {
    if (e.begin < pos)
      return bad(file, "tensor '" + e.name + "' overlaps the tensor before it"
                         + " (data_offsets begin " + std::to_string(e.begin)
                         + " < " + std::to_string(pos) + ")");
    if (e.begin > pos)
      return bad(file, "gap before tensor '" + e.name + "' (data_offsets begin "
                         + std::to_string(e.begin) + ", expected "
                         + std::to_string(pos) + ")");
    pos = e.end;
  }
  if (pos != buffer)
    return bad(file, "the tensors cover " + std::to_string(pos)
                       + " bytes of a data buffer of "
                       + std::to_string(buffer));
  return result;
}

std::string
encode_safetensors_header(const std::vector<safetensors_entry>& tensors,
                          const std::map<std::string, std::string>& metadata) {
  json doc = json::object();
  if (!metadata.empty())
    doc["__metadata__"] = metadata;
  uint64_t pos = 0;
  for (const auto& e : tensors) {
    auto n = safetensors_nbytes(e.type, e.shape);
    auto name = safetensors_dtype_name(e.type);
    doc[e.name] = json{{"dtype", name ? *name : std::string{"?"}},
                       {"shape", e.shape},
                       {"data_offsets", {pos, pos + (n ? *n : 0)}}};
    pos += n ? *n : 0;
  }
  auto text = doc.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t len = text.size();
  for (size_t i = 0; i < 8; ++i)
    out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + text;
}

namespace {

constexpr const char* alphabet
  = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

} // namespace

std::string base64_encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  auto byte = [&](size_t k) {
    return static_cast<uint32_t>(static_cast<unsigned char>(data[k]));
  };
  for (; i + 2 < data.size(); i += 3) {
    auto v = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    for (int s = 18; s >= 0; s -= 6)
      out += alphabet[(v >> s) & 63];
  }
  if (i + 1 == data.size()) {
    auto v = byte(i) << 16;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == data.size()) {
    auto v = (byte(i) << 16) | (byte(i + 1) << 8);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

caf::expected<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0)
    return make_error(errc::corrupt_item, "base64 of a length not a "
                                          "multiple of 4");
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t v = 0;
    int pad = 0;
    for (size_t k = 0; k < 4; ++k) {
      char c = text[i + k];
      uint32_t x = 0;
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        ++pad;
      } else if (pad > 0) {
        return make_error(errc::corrupt_item, "base64 padding in the middle");
      } else if (auto* p = std::strchr(alphabet, c); p != nullptr && c != 0) {
        x = static_cast<uint32_t>(p - alphabet);
      } else {
        return make_error(errc::corrupt_item, "not a base64 character");
      }
      v = (v << 6) | x;
    }
    out += static_cast<char>((v >> 16) & 0xff);
    if (pad < 2)
      out += static_cast<char>((v >> 8) & 0xff);
    if (pad < 1)
      out += static_cast<char>(v & 0xff);
  }
  return out;
}

} // namespace dcpp
