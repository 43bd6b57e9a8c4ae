#include "storage/item_io.hpp"

#include "core/error.hpp"
#include "storage/aligned_buffers.hpp"
#include "storage/checksum.hpp"
#include "storage/posix_file.hpp"

#include <xxhash.h>

#include <algorithm>
#include <limits>
#include <new>

namespace dcpp {

namespace {

using detail::block_scratch;
using detail::block_size;
using detail::check_checksum_form;
using detail::compare_checksum;
using detail::errno_text;
using detail::hasher;
using detail::pread_fully;

} // namespace

caf::expected<item_result>
write_bytes_item(item_sink& out, std::string_view bytes, bool checksum) {
  item_result res;
  res.length = bytes.size();
  if (checksum)
    res.checksum = item_checksum(bytes);
  if (auto err = out.append(bytes.data(), bytes.size()))
    return err;
  return res;
}

namespace {

caf::error read_exact(const item_location& loc, uint64_t pos, char* dst,
                      size_t n) {
  uint64_t done = 0;
  auto res = pread_fully(loc.fd, dst, n, loc.offset + pos, done);
  if (res == -1)
    return make_error(errc::corrupt_item, loc.path + " @ "
                                            + std::to_string(loc.offset)
                                            + ": file ends inside the item");
  if (res != 0)
    return make_error(errc::io_error,
                      loc.path + ": read at offset "
                        + std::to_string(loc.offset + pos + done)
                        + " failed: " + errno_text(res));
  return {};
}

std::string describe_location(const item_location& loc) {
  return loc.path + " @ " + std::to_string(loc.offset) + " ("
         + std::to_string(loc.length) + " bytes)";
}

} // namespace

caf::expected<std::string> read_item_bytes(const item_location& loc,
                                           std::string_view checksum) {
  if (!checksum.empty())
    if (auto err = check_checksum_form(checksum, describe_location(loc)))
      return err;
  if (loc.length
      > static_cast<uint64_t>(std::numeric_limits<size_t>::max() / 2))
    return make_error(errc::too_large, describe_location(loc));
  std::string out;
  try {
    out.resize(static_cast<size_t>(loc.length));
  } catch (const std::bad_alloc&) {
    return make_error(errc::too_large,
                      describe_location(loc) + ": cannot allocate the item");
  }
  if (auto err = read_exact(loc, 0, out.data(), out.size()))
    return err;
  if (!checksum.empty())
    if (auto err = compare_checksum(checksum, XXH64(out.data(), out.size(), 0),
                                    describe_location(loc)))
      return err;
  return out;
}

caf::expected<std::string> compute_item_checksum(const item_location& loc) {
  auto buf = block_scratch().get(block_size);
  if (buf == nullptr)
    return make_error(errc::too_large, "out of memory");
  hasher hash;
  for (uint64_t pos = 0; pos < loc.length;) {
    auto n = static_cast<size_t>(
      std::min<uint64_t>(block_size, loc.length - pos));
    if (auto err = read_exact(loc, pos, buf, n))
      return err;
    hash.update(buf, n);
    pos += n;
  }
  return format_checksum(hash.digest());
}

} // namespace dcpp
