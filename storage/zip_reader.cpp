#include "storage/zip_reader.hpp"

#include "core/error.hpp"
#include "storage/aligned_buffers.hpp"
#include "storage/little_endian.hpp"
#include "storage/posix_file.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

namespace dcpp::detail {

namespace {

/// Items up to this size are read whole when opened.
constexpr uint64_t small_item = 64 * 1024;

/// Bytes read from each end of a larger item when it is opened.
constexpr uint64_t probe_size = 4096;

/// Bound on the central directory (hostile input).
constexpr uint64_t max_central_directory = 64ull << 20;

} // namespace

std::string zip_reader::describe() const {
  return path + " @ " + std::to_string(base) + " (" + std::to_string(length)
         + " bytes)";
}

caf::error zip_reader::corrupt(const std::string& what) const {
  return make_error(errc::corrupt_item, describe() + ": " + what);
}

caf::error zip_reader::read_at(uint64_t pos, char* dst, size_t n) const {
  if (pos > length || n > length - pos)
    return corrupt("read past the item end");
  if (mem != nullptr) {
    std::memcpy(dst, mem + pos, n);
    return {};
  }
  uint64_t done = 0;
  auto res = pread_fully(fd, dst, n, base + pos, done);
  if (res == -1)
    return corrupt("file ends at offset " + std::to_string(base + pos + done)
                   + ", inside the item");
  if (res != 0)
    return make_error(errc::io_error, path + ": read at offset "
                                        + std::to_string(base + pos + done)
                                        + " failed: " + errno_text(res));
  return {};
}

const char* zip_reader::cached(uint64_t pos, uint64_t n) const {
  if (mem != nullptr)
    return pos <= length && n <= length - pos ? mem + pos : nullptr;
  if (pos <= head.size() && n <= head.size() - pos)
    return head.data() + pos;
  if (pos >= tail_pos && pos - tail_pos <= tail.size()
      && n <= tail.size() - (pos - tail_pos))
    return tail.data() + (pos - tail_pos);
  return nullptr;
}

caf::expected<std::string> zip_reader::fetch(uint64_t pos, uint64_t n) const {
  if (pos > length || n > length - pos)
    return corrupt("a structure at " + std::to_string(pos) + " (+"
                   + std::to_string(n) + ") lies outside the item");
  if (auto p = cached(pos, n))
    return std::string{p, static_cast<size_t>(n)};
  std::string out(static_cast<size_t>(n), '\0');
  if (auto err = read_at(pos, out.data(), out.size()))
    return err;
  return out;
}

caf::error zip_reader::hash_range(uint64_t begin, uint64_t end,
                                  hasher& hash) const {
  while (begin < end) {
    auto n = std::min<uint64_t>(end - begin, block_size);
    if (auto p = cached(begin, n)) {
      hash.update(p, n);
    } else {
      auto buf = block_scratch().get(block_size);
      if (buf == nullptr)
        return make_error(errc::too_large, describe() + ": out of memory");
      if (auto err = read_at(begin, buf, n))
        return err;
      hash.update(buf, n);
    }
    begin += n;
  }
  return {};
}

caf::error zip_reader::read_ends() {
  if (mem == nullptr) {
    if (length <= small_item) {
      head.assign(static_cast<size_t>(length), '\0');
      if (auto err = read_at(0, head.data(), head.size()))
        return err;
      tail_pos = length;
    } else {
      head.assign(static_cast<size_t>(probe_size), '\0');
      if (auto err = read_at(0, head.data(), head.size()))
        return err;
      tail_pos = length - probe_size;
      tail.assign(static_cast<size_t>(probe_size), '\0');
      if (auto err = read_at(tail_pos, tail.data(), tail.size()))
        return err;
    }
  }
  return {};
}

caf::expected<std::vector<zip_entry>> zip_reader::read_directory() {
  if (length < 22)
    return corrupt("too short for a zip archive");
  // The end record sits at the very end (torch writes no comment); search
  // backwards in case of a comment.
  auto find_eocd = [&](uint64_t from) -> int64_t {
    auto lowest = length >= 22 + 0xFFFF ? length - 22 - 0xFFFF : 0;
    lowest = std::max(lowest, from);
    for (uint64_t i = length - 22 + 1; i-- > lowest;) {
      auto p = cached(i, 22);
      if (p == nullptr)
        break;
      if (get32(p) == 0x06054b50 && i + 22 + get16(p + 20) == length)
        return static_cast<int64_t>(i);
    }
    return -1;
  };
  auto eocd = find_eocd(tail.empty() ? 0 : tail_pos);
  if (eocd < 0 && mem == nullptr && !tail.empty() && tail_pos > 0) {
    // A long comment: read the largest possible tail.
    auto n = std::min<uint64_t>(length, 22 + 0xFFFF + 20 + 56);
    tail_pos = length - n;
    tail.assign(static_cast<size_t>(n), '\0');
    if (auto err = read_at(tail_pos, tail.data(), tail.size()))
      return err;
    eocd = find_eocd(tail_pos);
  }
  if (eocd < 0)
    return corrupt("no zip end-of-central-directory record at the item end");
  auto epos = static_cast<uint64_t>(eocd);
  auto e = cached(epos, 22);
  uint64_t entries = get16(e + 10);
  uint64_t cd_size = get32(e + 12);
  uint64_t cd_offset = get32(e + 16);
  uint64_t cd_limit = epos;
  if (epos >= 20) {
    auto loc = fetch(epos - 20, 20);
    if (!loc)
      return std::move(loc.error());
    if (get32(loc->data()) == 0x07064b50) {
      auto rec_pos = get64(loc->data() + 8);
      if (rec_pos > epos - 20 || epos - 20 - rec_pos < 56)
        return corrupt("zip64 end record offset " + std::to_string(rec_pos)
                       + " is invalid");
      auto rec = fetch(rec_pos, 56);
      if (!rec)
        return std::move(rec.error());
      if (get32(rec->data()) != 0x06064b50)
        return corrupt("no zip64 end record where its locator points");
      entries = get64(rec->data() + 32);
      cd_size = get64(rec->data() + 40);
      cd_offset = get64(rec->data() + 48);
      cd_limit = rec_pos;
    }
  }
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset)
    return corrupt("central directory [" + std::to_string(cd_offset) + ", +"
                   + std::to_string(cd_size) + ") lies outside the item");
  if (cd_size > max_central_directory)
    return corrupt("central directory of " + std::to_string(cd_size)
                   + " bytes is too large");
  if (entries > cd_size / 46)
    return corrupt(std::to_string(entries)
                   + " entries do not fit the central directory");
  auto cd = fetch(cd_offset, cd_size);
  if (!cd)
    return std::move(cd.error());
  std::vector<zip_entry> result;
  result.reserve(static_cast<size_t>(entries));
  size_t pos = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    if (cd->size() - pos < 46 || get32(cd->data() + pos) != 0x02014b50)
      return corrupt("bad central directory entry " + std::to_string(i));
    auto p = cd->data() + pos;
    zip_entry x;
    x.method = get16(p + 10);
    x.compressed_size = get32(p + 20);
    x.size = get32(p + 24);
    size_t name_len = get16(p + 28);
    size_t extra_len = get16(p + 30);
    size_t comment_len = get16(p + 32);
    x.local_offset = get32(p + 42);
    if (cd->size() - pos - 46 < name_len + extra_len + comment_len)
      return corrupt("central directory entry " + std::to_string(i)
                     + " overruns the directory");
    x.name.assign(p + 46, name_len);
    // Zip64 extended information: the fields whose 32-bit value is
    // saturated, in the order uncompressed, compressed, local offset.
    auto extra = p + 46 + name_len;
    for (size_t j = 0; j + 4 <= extra_len;) {
      auto id = get16(extra + j);
      size_t len = get16(extra + j + 2);
      if (extra_len - j - 4 < len)
        return corrupt("bad extra field in central directory entry "
                       + std::to_string(i));
      if (id == 0x0001) {
        auto field = extra + j + 4;
        size_t k = 0;
        auto next = [&](uint64_t& out) {
          if (len - k < 8)
            return false;
          out = get64(field + k);
          k += 8;
          return true;
        };
        if ((x.size == u32_max && !next(x.size))
            || (x.compressed_size == u32_max && !next(x.compressed_size))
            || (x.local_offset == u32_max && !next(x.local_offset)))
          return corrupt("short zip64 field in central directory entry "
                         + std::to_string(i));
      }
      j += 4 + len;
    }
    pos += 46 + name_len + extra_len + comment_len;
    result.push_back(std::move(x));
  }
  return result;
}

caf::expected<uint64_t> zip_reader::record_data(const zip_entry& e) {
  if (e.method != 0)
    return corrupt("record '" + e.name + "' is compressed (method "
                   + std::to_string(e.method) + "); torch writes STORED");
  if (e.compressed_size != e.size)
    return corrupt("record '" + e.name + "' has differing sizes");
  auto hdr = fetch(e.local_offset, 30);
  if (!hdr)
    return std::move(hdr.error());
  if (get32(hdr->data()) != 0x04034b50)
    return corrupt("no local header for '" + e.name + "' at "
                   + std::to_string(e.local_offset));
  auto start = e.local_offset + 30 + get16(hdr->data() + 26)
               + get16(hdr->data() + 28);
  if (start > length || e.size > length - start)
    return corrupt("record '" + e.name + "' lies outside the item");
  return start;
}

caf::expected<const zip_entry*>
zip_reader::torch_pickle_record(const std::vector<zip_entry>& entries,
                                std::string& prefix) {
  static constexpr std::string_view suffix = "/data.pkl";
  const zip_entry* pkl = nullptr;
  for (const auto& e : entries) {
    if (e.name.size() > suffix.size()
        && e.name.compare(e.name.size() - suffix.size(), suffix.size(), suffix)
             == 0
        && e.name.find('/') == e.name.size() - suffix.size()) {
      pkl = &e;
      prefix = e.name.substr(0, e.name.size() - suffix.size());
      break;
    }
  }
  if (pkl == nullptr)
    return corrupt("no data.pkl record: not a torch.save archive");
  for (const auto& e : entries) {
    if (e.name != prefix + "/byteorder")
      continue;
    auto start = record_data(e);
    if (!start)
      return std::move(start.error());
    if (e.size > 16)
      return corrupt("bad byteorder record");
    auto text = fetch(*start, e.size);
    if (!text)
      return std::move(text.error());
    if (*text != "little")
      return make_error(errc::unsupported,
                        describe() + ": byte order '" + *text
                          + "' (only little-endian archives are supported)");
  }
  return pkl;
}

} // namespace dcpp::detail
