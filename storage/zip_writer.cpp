#include "storage/zip_writer.hpp"

#include "storage/little_endian.hpp"

#include <algorithm>
#include <utility>

namespace dcpp::detail {

namespace {

/// Data of a record is aligned to this many bytes from the item start.
constexpr uint64_t field_alignment = 64;

/// The Zip64 extended information field of a record of `size` bytes at
/// `offset` (empty if neither needs it): the sizes (uncompressed `size`,
/// compressed `compressed`) if `size` does not fit 32 bits, then the
/// offset if it does not.
std::string zip64_extra(uint64_t size, uint64_t compressed, uint64_t offset) {
  bool big_size = size >= u32_max;
  bool big_offset = offset >= u32_max;
  std::string zip64;
  if (big_size || big_offset) {
    put16(zip64, 0x0001);
    put16(zip64,
          static_cast<uint16_t>((big_size ? 16 : 0) + (big_offset ? 8 : 0)));
    if (big_size) {
      put64(zip64, size);
      put64(zip64, compressed);
    }
    if (big_offset)
      put64(zip64, offset);
  }
  return zip64;
}

} // namespace

caf::error zip_writer::begin_record(std::string name, uint64_t size) {
  entry e;
  e.name = std::move(name);
  e.offset = pos_;
  e.size = size;
  // PyTorchStreamWriter (miniz) writes the real uncompressed size and a
  // zero compressed size here; the data descriptor has both.
  auto zip64 = zip64_extra(size, 0, e.offset);
  auto start = e.offset + 30 + e.name.size() + zip64.size() + 4;
  auto padding = (field_alignment - start % field_alignment) % field_alignment;
  std::string hdr;
  hdr.reserve(30 + e.name.size() + zip64.size() + 4 + padding);
  put32(hdr, 0x04034b50);
  put16(hdr, 0); // version needed
  put16(hdr, flags_of(e.size));
  put16(hdr, 0); // STORED
  put16(hdr, 0); // time
  put16(hdr, 0); // date
  put32(hdr, 0); // crc (in the descriptor)
  put32(hdr, 0); // compressed size
  put32(hdr, 0); // uncompressed size
  put16(hdr, static_cast<uint16_t>(e.name.size()));
  put16(hdr, static_cast<uint16_t>(zip64.size() + 4 + padding));
  hdr += e.name;
  hdr += zip64;
  hdr += "FB";
  put16(hdr, static_cast<uint16_t>(padding));
  hdr.append(padding, 'Z');
  entries_.push_back(std::move(e));
  crc_ = 0;
  return emit(hdr.data(), hdr.size());
}

caf::error zip_writer::data(const void* ptr, size_t size) {
  crc_ = crc32(crc_, ptr, size);
  return emit(ptr, size);
}

caf::error zip_writer::end_record() {
  auto& e = entries_.back();
  e.crc = crc_;
  if (e.size == 0)
    return {}; // empty records have no data descriptor
  std::string desc;
  put32(desc, 0x08074b50);
  put32(desc, e.crc);
  if (e.size >= u32_max || e.offset >= u32_max) {
    put64(desc, e.size);
    put64(desc, e.size);
  } else {
    put32(desc, static_cast<uint32_t>(e.size));
    put32(desc, static_cast<uint32_t>(e.size));
  }
  return emit(desc.data(), desc.size());
}

caf::error zip_writer::finish() {
  std::string tail;
  auto cd_offset = pos_;
  for (const auto& e : entries_) {
    auto zip64 = zip64_extra(e.size, e.size, e.offset);
    put32(tail, 0x02014b50);
    put16(tail, 0); // version made by
    put16(tail, 0); // version needed
    put16(tail, flags_of(e.size));
    put16(tail, 0); // STORED
    put16(tail, 0); // time
    put16(tail, 0); // date
    put32(tail, e.crc);
    put32(tail, static_cast<uint32_t>(std::min(e.size, u32_max)));
    put32(tail, static_cast<uint32_t>(std::min(e.size, u32_max)));
    put16(tail, static_cast<uint16_t>(e.name.size()));
    put16(tail, static_cast<uint16_t>(zip64.size()));
    put16(tail, 0); // comment
    put16(tail, 0); // disk
    put16(tail, 0); // internal attributes
    put32(tail, 0); // external attributes
    put32(tail, static_cast<uint32_t>(std::min(e.offset, u32_max)));
    tail += e.name;
    tail += zip64;
  }
  auto cd_size = static_cast<uint64_t>(tail.size());
  auto eocd64_offset = cd_offset + cd_size;
  auto n = static_cast<uint64_t>(entries_.size());
  put32(tail, 0x06064b50);
  put64(tail, 44);
  put16(tail, 0x031e); // version made by
  put16(tail, 0x002d); // version needed
  put32(tail, 0);
  put32(tail, 0);
  put64(tail, n);
  put64(tail, n);
  put64(tail, cd_size);
  put64(tail, cd_offset);
  put32(tail, 0x07064b50);
  put32(tail, 0);
  put64(tail, eocd64_offset);
  put32(tail, 1);
  put32(tail, 0x06054b50);
  put16(tail, 0);
  put16(tail, 0);
  put16(tail, static_cast<uint16_t>(std::min<uint64_t>(n, 0xFFFF)));
  put16(tail, static_cast<uint16_t>(std::min<uint64_t>(n, 0xFFFF)));
  put32(tail, static_cast<uint32_t>(std::min(cd_size, u32_max)));
  put32(tail, static_cast<uint32_t>(std::min(cd_offset, u32_max)));
  put16(tail, 0);
  return emit(tail.data(), tail.size());
}

/// UTF-8 names, plus a data descriptor unless the record is empty (as
/// miniz does).
uint16_t zip_writer::flags_of(uint64_t size) {
  return size > 0 ? 0x0808 : 0x0800;
}

caf::error zip_writer::emit(const void* ptr, size_t size) {
  if (hash_)
    hash_->update(ptr, size);
  pos_ += size;
  return out_.append(ptr, size);
}

} // namespace dcpp::detail
