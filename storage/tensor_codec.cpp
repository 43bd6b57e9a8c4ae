#include "storage/tensor_codec.hpp"

#include "core/error.hpp"
#include "storage/aligned_buffers.hpp"
#include "storage/landing.hpp"
#include "storage/little_endian.hpp"
#include "storage/pickle.hpp"
#include "storage/pickle_emitter.hpp"
#include "storage/posix_file.hpp"
#include "storage/state_dict.hpp"
#include "storage/zip_reader.hpp"
#include "storage/zip_writer.hpp"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

// A tensor item is a zip archive (storage/zip_writer.hpp, zip_reader.hpp)
// whose `data.pkl` (storage/pickle_emitter.hpp) describes one tensor; this
// file connects those parts to torch tensors.

namespace dcpp {

namespace {

using detail::advise_huge_pages;
using detail::block_scratch;
using detail::block_size;
using detail::check_checksum_form;
using detail::compare_checksum;
using detail::hasher;
using detail::host_is_little_endian;
using detail::scratch_buffer;
using detail::zip_entry;
using detail::zip_writer;

static_assert(sizeof(void*) == 8, "dcpp needs a 64-bit platform");

/// Bounds on structures inside a tensor item (hostile input).
constexpr uint64_t max_pickle = 1ull << 20;
constexpr size_t max_ndim = 64;

caf::error torch_error(errc code, const std::string& what,
                       const std::exception& ex) {
  std::string msg = ex.what();
  // c10::Error appends a backtrace; the first line says what happened.
  if (auto pos = msg.find('\n'); pos != std::string::npos)
    msg.resize(pos);
  return make_error(code, what + ": torch: " + msg);
}

int64_t checked_numel(c10::IntArrayRef sizes) {
  int64_t n = 1;
  for (auto s : sizes)
    n *= s;
  return n;
}

/// Whether a box with `lengths` and `strides_a` and a tensor with
/// `strides_b` place every element at the same relative offset.
bool same_layout(const shape_t& lengths, c10::IntArrayRef strides_a,
                 c10::IntArrayRef strides_b) {
  if (strides_a.size() != lengths.size() || strides_b.size() != lengths.size())
    return false;
  for (size_t i = 0; i < lengths.size(); ++i)
    if (lengths[i] > 1 && strides_a[i] != strides_b[i])
      return false;
  return true;
}

/// A reusable per-thread buffer for staging areas.
scratch_buffer& staging_scratch() {
  thread_local scratch_buffer buf;
  return buf;
}

constexpr size_t keep_staging = size_t{64} << 20;

} // namespace

// -- public: writing ----------------------------------------------------------

caf::expected<item_result>
write_tensor_item(item_sink& out, const at::Tensor& tensor, bool checksum,
                  std::optional<dtype> saved) {
  static const bool little_endian = host_is_little_endian();
  if (!little_endian)
    return make_error(errc::unsupported,
                      "tensor items are little-endian; this host is not");
  if (!tensor.defined())
    return make_error(errc::invalid_argument,
                      "cannot save an undefined tensor");
  try {
    if (tensor.layout() != c10::kStrided)
      return make_error(errc::unsupported, "cannot save a tensor with layout "
                                             + c10::str(tensor.layout()));
    auto type = to_dtype(tensor.scalar_type());
    if (!type)
      return std::move(type.error());
    if (saved && *saved != *type) {
      if (carrier_dtype(*saved) != *type)
        return make_error(errc::dtype_mismatch, "a " + to_string(*type)
                                                  + " tensor cannot carry "
                                                  + to_string(*saved));
      type = *saved;
    }
    at::Tensor t = tensor;
    if (!t.device().is_cpu())
      t = t.cpu();
    if (t.is_conj())
      t = t.resolve_conj();
    if (t.is_neg())
      t = t.resolve_neg();
    // A dense tensor is written from its memory with its strides, whatever
    // storage surrounds it; anything else becomes one contiguous copy.
    if (!t.is_non_overlapping_and_dense())
      t = t.contiguous();
    auto esize = element_size(*type);
    auto n = checked_numel(t.sizes());
    auto nbytes = static_cast<uint64_t>(n) * esize;
    auto pkl = detail::tensor_pickle(*type, n,
                                     {t.sizes().data(), t.sizes().size()},
                                     {t.strides().data(), t.strides().size()});
    hasher hash;
    zip_writer zip{out, checksum ? &hash : nullptr};
    if (auto err = zip.begin_record("archive/data.pkl", pkl.size()))
      return err;
    if (auto err = zip.data(pkl.data(), pkl.size()))
      return err;
    if (auto err = zip.end_record())
      return err;
    if (auto err = zip.begin_record("archive/data/0", nbytes))
      return err;
    auto ptr = static_cast<const char*>(t.data_ptr());
    for (uint64_t done = 0; done < nbytes;) {
      auto len = static_cast<size_t>(
        std::min<uint64_t>(block_size, nbytes - done));
      if (auto err = zip.data(ptr + done, len))
        return err;
      done += len;
    }
    if (auto err = zip.end_record())
      return err;
    if (auto err = zip.begin_record("archive/version", 2))
      return err;
    if (auto err = zip.data("3\n", 2))
      return err;
    if (auto err = zip.end_record())
      return err;
    if (auto err = zip.finish())
      return err;
    item_result res;
    res.length = zip.position();
    if (checksum)
      res.checksum = format_checksum(hash.digest());
    return res;
  } catch (const std::exception& ex) {
    return torch_error(errc::invalid_argument, "writing a tensor item", ex);
  }
}

caf::expected<std::string> encode_tensor_item(const at::Tensor& tensor) {
  string_sink sink;
  auto res = write_tensor_item(sink, tensor, false);
  if (!res)
    return std::move(res.error());
  return std::move(sink.buffer());
}

// -- public: reading ----------------------------------------------------------

/// A tensor item: its zip archive (the byte source and what opening read)
/// and what its `data.pkl` says.
struct tensor_item_reader::impl : detail::zip_reader {
  tensor_item_layout layout;

  caf::error open();
  caf::error parse_pickle(std::string_view bytes, std::string& key);

  /// A destination for a byte range of the data record.
  struct segment {
    uint64_t begin;
    uint64_t end;
    char* dst;
    /// Read through the bounce buffer (storage/landing.hpp).
    bool bounce = false;
  };

  /// Reads `s` from the record into its destination, hashing the bytes on
  /// the way if `hash`.
  caf::error land(const segment& s, hasher* hash) const;

  caf::error stream(std::vector<segment> segments, hasher* hash) const;
};

caf::error check_view(const shape_t& sizes, const shape_t& strides,
                      int64_t storage_offset, int64_t storage_numel) {
  auto view = [&] {
    return "view (offset " + std::to_string(storage_offset) + ", sizes "
           + to_string(sizes) + ", strides " + to_string(strides) + ")";
  };
  if (sizes.size() != strides.size())
    return make_error(errc::corrupt_item, view()
                                            + ": sizes and strides differ"
                                              " in length");
  if (storage_offset < 0 || storage_numel < 0)
    return make_error(errc::corrupt_item,
                      view() + ": negative storage offset or size");
  bool empty = false;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] < 0 || strides[i] < 0)
      return make_error(errc::corrupt_item, "negative size or stride in "
                                              + to_string(sizes) + " / "
                                              + to_string(strides));
    if (sizes[i] == 0)
      empty = true;
  }
  if (empty)
    return {};
  // Largest element index, computed without overflow: every term is
  // bounded by the storage size first.
  auto limit = static_cast<uint64_t>(storage_numel);
  auto last = static_cast<uint64_t>(storage_offset);
  bool inside = last < limit;
  uint64_t count = 1;
  for (size_t i = 0; inside && i < sizes.size(); ++i) {
    auto extent = static_cast<uint64_t>(sizes[i] - 1);
    auto stride = static_cast<uint64_t>(strides[i]);
    if (extent > 0 && stride > 0 && extent > (limit - 1 - last) / stride)
      inside = false;
    else
      last += extent * stride;
    // Zero strides repeat elements: bound the element count too.
    if (static_cast<uint64_t>(sizes[i]) > (uint64_t{1} << 62) / count)
      inside = false;
    else
      count *= static_cast<uint64_t>(sizes[i]);
  }
  if (!inside || last >= limit)
    return make_error(errc::corrupt_item, view() + " exceeds its storage of "
                                            + std::to_string(storage_numel)
                                            + " elements");
  return {};
}

namespace {

bool int_tuple(const pickle::value_ptr& x, shape_t& out) {
  if (!x || !x->is(pickle::kind::tuple) || x->items.size() > max_ndim)
    return false;
  out.clear();
  for (const auto& item : x->items) {
    if (!item || !item->is(pickle::kind::integer))
      return false;
    out.push_back(item->i);
  }
  return true;
}

} // namespace

caf::expected<tensor_call> read_tensor_call(const pickle::value& v) {
  auto bad = [](const std::string& what) {
    return make_error(errc::corrupt_item, what);
  };
  using pickle::kind;
  if (!v.is(kind::object) || v.items.size() < 2)
    return bad("not a call");
  const auto& fn = v.items[0];
  const auto& args = v.items[1];
  if (!fn || !fn->is(kind::global) || fn->s != "torch._utils"
      || (fn->name != "_rebuild_tensor_v2" && fn->name != "_rebuild_tensor_v3"))
    return bad("callable is not torch._utils._rebuild_tensor_v2 or v3");
  // v2: (storage, storage_offset, size, stride, requires_grad,
  // backward_hooks[, metadata]); v3 (torch 2.x, for dtypes without a typed
  // storage class): the same with the dtype after backward_hooks, the
  // storage an UntypedStorage sized in bytes.
  const bool v3 = fn->name == "_rebuild_tensor_v3";
  if (!args || !args->is(kind::tuple) || args->items.size() < (v3 ? 7 : 5))
    return bad("wrong arguments");
  const auto& a = args->items;
  const auto& pid = a[0];
  if (!pid || !pid->is(kind::persid) || pid->items.size() != 1)
    return bad("first argument is not a persistent storage id");
  const auto& id = pid->items[0];
  if (!id || !id->is(kind::tuple) || id->items.size() < 5)
    return bad("bad storage id");
  const auto& tag = id->items[0];
  const auto& cls = id->items[1];
  const auto& key = id->items[2];
  const auto& numel = id->items[4];
  if (!tag || !tag->is(kind::string) || tag->s != "storage")
    return bad("storage id is not tagged 'storage'");
  caf::expected<dtype> type = dtype::float32;
  if (v3) {
    if (!cls || !cls->is(kind::global) || cls->s != "torch.storage"
        || cls->name != "UntypedStorage")
      return bad("the storage of _rebuild_tensor_v3 is not "
                 "torch.storage.UntypedStorage");
    const auto& dt = a[6];
    if (!dt || !dt->is(kind::global) || dt->s != "torch")
      return bad("the dtype of _rebuild_tensor_v3 is not a torch dtype");
    type = parse_dtype(dt->name);
    if (!type)
      return bad("unknown dtype torch." + dt->name);
  } else {
    if (!cls || !cls->is(kind::global) || cls->s != "torch")
      return bad("storage type is not a torch storage class");
    type = dtype_from_storage_class(cls->name);
    if (!type)
      return bad("unknown storage class torch." + cls->name);
  }
  if (!key || !key->is(kind::string) || key->s.empty() || key->s.size() > 64)
    return bad("bad storage key");
  if (!numel || !numel->is(kind::integer) || numel->i < 0)
    return bad("bad storage size");
  const auto esize = static_cast<int64_t>(element_size(*type));
  if (v3 && numel->i % esize != 0)
    return bad("an UntypedStorage of " + std::to_string(numel->i)
               + " bytes does not hold whole " + to_string(*type)
               + " elements");
  if (!a[1] || !a[1]->is(kind::integer) || a[1]->i < 0)
    return bad("bad storage offset");
  tensor_call x;
  x.type = *type;
  x.key = key->s;
  x.storage_numel = v3 ? numel->i / esize : numel->i;
  x.storage_offset = a[1]->i;
  if (!int_tuple(a[2], x.sizes))
    return bad("sizes are not a tuple of at most 64 ints");
  if (!int_tuple(a[3], x.strides))
    return bad("strides are not a tuple of at most 64 ints");
  if (x.sizes.size() != x.strides.size())
    return bad("sizes " + to_string(x.sizes) + " and strides "
               + to_string(x.strides) + " do not match");
  return x;
}

caf::error tensor_item_reader::impl::parse_pickle(std::string_view bytes,
                                                  std::string& key) {
  auto root = pickle::read(bytes);
  if (!root)
    return corrupt("data.pkl: " + dcpp::describe(root.error()));
  auto call = read_tensor_call(**root);
  if (!call)
    return corrupt("data.pkl does not hold a plain tensor: "
                   + context_of(call.error()));
  auto& x = layout;
  x.type = call->type;
  x.storage_numel = call->storage_numel;
  x.storage_offset = call->storage_offset;
  x.sizes = std::move(call->sizes);
  x.strides = std::move(call->strides);
  key = std::move(call->key);
  return {};
}

caf::error tensor_item_reader::impl::open() {
  if (auto err = read_ends())
    return err;
  auto entries = read_directory();
  if (!entries)
    return std::move(entries.error());
  std::string prefix;
  auto found = torch_pickle_record(*entries, prefix);
  if (!found)
    return std::move(found.error());
  const zip_entry* pkl = *found;
  auto find = [&](const std::string& name) -> const zip_entry* {
    for (const auto& e : *entries)
      if (e.name == name)
        return &e;
    return nullptr;
  };
  if (pkl->size > max_pickle)
    return corrupt("data.pkl of " + std::to_string(pkl->size)
                   + " bytes is too large for a tensor item");
  auto pkl_start = record_data(*pkl);
  if (!pkl_start)
    return std::move(pkl_start.error());
  auto pkl_bytes = fetch(*pkl_start, pkl->size);
  if (!pkl_bytes)
    return std::move(pkl_bytes.error());
  std::string key;
  if (auto err = parse_pickle(*pkl_bytes, key))
    return err;
  auto data = find(prefix + "/data/" + key);
  if (data == nullptr)
    return corrupt("no record for storage '" + key + "'");
  auto data_start = record_data(*data);
  if (!data_start)
    return std::move(data_start.error());
  auto& x = layout;
  auto esize = element_size(x.type);
  if (static_cast<uint64_t>(x.storage_numel) > data->size / esize
      || static_cast<uint64_t>(x.storage_numel) * esize != data->size)
    return corrupt("storage of " + std::to_string(x.storage_numel) + " "
                   + to_string(x.type)
                   + " elements does not match its record of "
                   + std::to_string(data->size) + " bytes");
  x.data_offset = *data_start;
  x.data_size = data->size;
  if (auto err = check_view(x.sizes, x.strides, x.storage_offset,
                            x.storage_numel))
    return corrupt(context_of(err));
  return {};
}

caf::error tensor_item_reader::impl::land(const segment& s,
                                          hasher* hash) const {
  auto base_pos = layout.data_offset;
  if (!s.bounce && hash == nullptr)
    return read_at(base_pos + s.begin, s.dst,
                   static_cast<size_t>(s.end - s.begin));
  char* buf = nullptr;
  if (s.bounce) {
    buf = block_scratch().get(block_size);
    if (buf == nullptr)
      return make_error(errc::too_large,
                        describe() + ": cannot allocate the bounce buffer");
  }
  // One block at a time: the hash and the copy out of the bounce buffer
  // read it while it is in cache.
  for (auto pos = s.begin; pos < s.end;) {
    auto n = static_cast<size_t>(std::min<uint64_t>(block_size, s.end - pos));
    auto dst = s.dst + (pos - s.begin);
    auto into = s.bounce ? buf : dst;
    if (auto err = read_at(base_pos + pos, into, n))
      return err;
    if (hash != nullptr)
      hash->update(into, n);
    if (s.bounce)
      std::memcpy(dst, buf, n);
    pos += n;
  }
  if (s.bounce)
    detail::count_bounced(s.end - s.begin);
  return {};
}

caf::error tensor_item_reader::impl::stream(std::vector<segment> segments,
                                            hasher* hash) const {
  std::sort(segments.begin(), segments.end(),
            [](const segment& a, const segment& b) {
              return a.begin < b.begin;
            });
  auto base_pos = layout.data_offset;
  if (hash == nullptr) {
    for (const auto& s : segments)
      if (auto err = land(s, nullptr))
        return err;
    return {};
  }
  // Every byte of the item, in order, exactly once.
  if (auto err = hash_range(0, base_pos, *hash))
    return err;
  uint64_t cursor = 0;
  for (const auto& s : segments) {
    if (cursor < s.begin)
      if (auto err = hash_range(base_pos + cursor, base_pos + s.begin, *hash))
        return err;
    if (auto err = land(s, hash))
      return err;
    cursor = s.end;
  }
  if (cursor < layout.data_size)
    if (auto err = hash_range(base_pos + cursor, base_pos + layout.data_size,
                              *hash))
      return err;
  return hash_range(base_pos + layout.data_size, length, *hash);
}

tensor_item_reader::tensor_item_reader() = default;

tensor_item_reader::~tensor_item_reader() = default;

tensor_item_reader::tensor_item_reader(tensor_item_reader&&) noexcept = default;

tensor_item_reader&
tensor_item_reader::operator=(tensor_item_reader&&) noexcept = default;

caf::expected<tensor_item_reader>
tensor_item_reader::open(const item_location& loc) {
  tensor_item_reader result;
  result.impl_ = std::make_unique<impl>();
  auto& x = *result.impl_;
  x.fd = loc.fd;
  x.path = loc.path;
  x.base = loc.offset;
  x.length = loc.length;
  if (loc.fd < 0)
    return make_error(errc::invalid_argument,
                      x.describe() + ": no open file descriptor");
  try {
    if (auto err = x.open())
      return err;
  } catch (const std::exception& ex) {
    return torch_error(errc::corrupt_item, x.describe(), ex);
  }
  return result;
}

caf::expected<tensor_item_reader>
tensor_item_reader::open_memory(std::string_view item, std::string what) {
  tensor_item_reader result;
  result.impl_ = std::make_unique<impl>();
  auto& x = *result.impl_;
  x.mem = item.data();
  x.path = std::move(what);
  x.length = item.size();
  x.tail_pos = item.size();
  try {
    if (auto err = x.open())
      return err;
  } catch (const std::exception& ex) {
    return torch_error(errc::corrupt_item, x.describe(), ex);
  }
  return result;
}

const tensor_item_layout& tensor_item_reader::layout() const {
  return impl_->layout;
}

std::string tensor_item_reader::describe() const {
  return impl_ ? impl_->describe() : std::string{"<no item>"};
}

caf::error tensor_item_reader::expect(dtype type, const shape_t& sizes) const {
  const auto& x = impl_->layout;
  if (x.type != type)
    return impl_->corrupt("holds " + to_string(x.type)
                          + " data; the metadata says " + to_string(type));
  if (x.sizes != sizes)
    return impl_->corrupt("holds a tensor of shape " + to_string(x.sizes)
                          + "; the metadata says " + to_string(sizes));
  return {};
}

caf::error tensor_item_reader::read_into(const std::vector<chunk_copy>& copies,
                                         std::string_view checksum,
                                         landing_mode landing) const {
  if (!impl_)
    return make_error(errc::invalid_argument, "read_into: no item");
  const auto& x = *impl_;
  const auto& L = x.layout;
  auto esize = static_cast<int64_t>(element_size(L.type));
  auto saved_type = to_scalar_type(L.type);
  if (!checksum.empty())
    if (auto err = check_checksum_form(checksum, x.describe()))
      return err;
  try {
    struct planned {
      const chunk_copy* copy;
      int64_t lo; // first element (storage index)
      int64_t hi; // one past the last element
      int64_t numel;
      bool direct;
    };
    std::vector<planned> plan;
    plan.reserve(copies.size());
    for (const auto& c : copies) {
      auto ndim = L.sizes.size();
      if (c.offsets.size() != ndim || c.lengths.size() != ndim)
        return make_error(errc::invalid_argument,
                          x.describe() + ": box " + to_string(c.offsets) + " + "
                            + to_string(c.lengths) + " does not match the "
                            + std::to_string(ndim) + "-d saved tensor");
      for (size_t i = 0; i < ndim; ++i)
        if (c.offsets[i] < 0 || c.lengths[i] < 0 || c.offsets[i] > L.sizes[i]
            || c.lengths[i] > L.sizes[i] - c.offsets[i])
          return make_error(errc::invalid_argument,
                            x.describe() + ": box " + to_string(c.offsets)
                              + " + " + to_string(c.lengths)
                              + " leaves the saved tensor of shape "
                              + to_string(L.sizes));
      if (!c.dest.defined())
        return make_error(errc::invalid_argument,
                          x.describe() + ": undefined destination tensor");
      if (c.dest.sizes() != c10::IntArrayRef{c.lengths})
        return make_error(errc::shape_mismatch,
                          x.describe() + ": destination of shape "
                            + c10::str(c.dest.sizes()) + " for a box of "
                            + to_string(c.lengths));
      planned p{&c, 0, 0, 1, false};
      int64_t lo = L.storage_offset;
      int64_t extent = 0;
      for (size_t i = 0; i < ndim; ++i) {
        lo += c.offsets[i] * L.strides[i];
        p.numel *= c.lengths[i];
        if (c.lengths[i] > 0)
          extent += (c.lengths[i] - 1) * L.strides[i];
      }
      if (p.numel == 0)
        continue;
      p.lo = lo;
      p.hi = lo + extent + 1;
      p.direct = c.dest.device().is_cpu() && c.dest.scalar_type() == saved_type
                 && c.dest.is_non_overlapping_and_dense()
                 && same_layout(c.lengths, L.strides, c.dest.strides());
      plan.push_back(p);
    }
    // Direct copies must not overlap each other or the staged span; demote
    // those that do until the layout is stable.
    int64_t slo = std::numeric_limits<int64_t>::max();
    int64_t shi = std::numeric_limits<int64_t>::min();
    for (bool changed = true; changed;) {
      changed = false;
      slo = std::numeric_limits<int64_t>::max();
      shi = std::numeric_limits<int64_t>::min();
      for (const auto& p : plan)
        if (!p.direct) {
          slo = std::min(slo, p.lo);
          shi = std::max(shi, p.hi);
        }
      std::vector<planned*> direct;
      for (auto& p : plan)
        if (p.direct)
          direct.push_back(&p);
      std::sort(direct.begin(), direct.end(),
                [](auto a, auto b) { return a->lo < b->lo; });
      int64_t prev_hi = std::numeric_limits<int64_t>::min();
      for (auto p : direct) {
        bool hits_stage = slo < shi && p->lo < shi && slo < p->hi;
        if (p->lo < prev_hi || hits_stage) {
          p->direct = false;
          changed = true;
          break;
        }
        prev_hi = p->hi;
      }
    }
    // Memory dcpp allocated as huge pages is read directly; other memory
    // the way this host's probe (or the caller) chose, asked only when
    // such memory comes up.
    std::optional<bool> bounce_foreign;
    auto bounce = [&](const char* dst, size_t bytes) {
      if (x.mem != nullptr || landing == landing_mode::direct
          || detail::is_huge_memory(dst, bytes))
        return false;
      if (!bounce_foreign)
        bounce_foreign = detail::resolve_read_landing(landing)
                         == landing_mode::bounce;
      return *bounce_foreign;
    };
    std::vector<impl::segment> segments;
    for (const auto& p : plan)
      if (p.direct) {
        auto dst = static_cast<char*>(p.copy->dest.data_ptr());
        auto bytes = static_cast<size_t>((p.hi - p.lo) * esize);
        segments.push_back(impl::segment{static_cast<uint64_t>(p.lo * esize),
                                         static_cast<uint64_t>(p.hi * esize),
                                         dst, bounce(dst, bytes)});
      }
    char* stage = nullptr;
    if (slo < shi) {
      auto bytes = static_cast<size_t>((shi - slo) * esize);
      stage = staging_scratch().get(bytes);
      if (stage == nullptr)
        return make_error(errc::too_large, x.describe() + ": cannot allocate "
                                             + std::to_string(bytes)
                                             + " staging bytes");
      // The staging buffer is huge pages from one block on.
      segments.push_back(impl::segment{
        static_cast<uint64_t>(slo * esize), static_cast<uint64_t>(shi * esize),
        stage, bytes < block_size && bounce(stage, bytes)});
    }
    hasher hash;
    auto err = x.stream(std::move(segments),
                        checksum.empty() ? nullptr : &hash);
    if (!err && !checksum.empty())
      err = compare_checksum(checksum, hash.digest(), x.describe());
    if (!err && stage != nullptr) {
      auto opts = at::TensorOptions().dtype(saved_type);
      auto src = at::from_blob(stage, {shi - slo}, opts);
      for (const auto& p : plan) {
        if (p.direct)
          continue;
        const auto& c = *p.copy;
        c.dest.copy_(src.as_strided(c.lengths, L.strides, p.lo - slo));
      }
    }
    staging_scratch().trim(keep_staging);
    return err;
  } catch (const std::exception& ex) {
    staging_scratch().trim(keep_staging);
    return torch_error(errc::invalid_argument, x.describe(), ex);
  }
}

caf::expected<at::Tensor>
tensor_item_reader::read_tensor(std::string_view checksum) const {
  if (!impl_)
    return make_error(errc::invalid_argument, "read_tensor: no item");
  const auto& x = *impl_;
  const auto& L = x.layout;
  if (!checksum.empty())
    if (auto err = check_checksum_form(checksum, x.describe()))
      return err;
  try {
    auto storage = at::empty({L.storage_numel},
                             at::TensorOptions().dtype(to_scalar_type(L.type)));
    auto ptr = static_cast<char*>(storage.data_ptr());
    advise_huge_pages(ptr, L.data_size);
    std::vector<impl::segment> segments;
    if (L.data_size > 0)
      segments.push_back(impl::segment{0, L.data_size, ptr});
    hasher hash;
    if (auto err = x.stream(std::move(segments),
                            checksum.empty() ? nullptr : &hash))
      return err;
    if (!checksum.empty())
      if (auto err = compare_checksum(checksum, hash.digest(), x.describe()))
        return err;
    return storage.as_strided(L.sizes, L.strides, L.storage_offset);
  } catch (const std::exception& ex) {
    return torch_error(errc::too_large, x.describe(), ex);
  }
}

// -- public: plan items -------------------------------------------------------

caf::expected<item_result>
write_plan_item(item_sink& out, const write_item& item,
                const item_source& source, bool checksum) {
  caf::expected<item_result> res = item_result{};
  if (item.type == write_item_type::bytes) {
    auto bytes = source.bytes(item);
    if (!bytes)
      return with_context(bytes.error(), to_string(item.index));
    res = write_bytes_item(out, *bytes, checksum);
  } else {
    auto t = source.tensor(item);
    if (!t)
      return with_context(t.error(), to_string(item.index));
    if (!t->defined())
      return make_error(errc::invalid_argument,
                        to_string(item.index) + ": undefined tensor");
    const auto& want = item.tensor_data.chunk.sizes;
    if (t->sizes() != c10::IntArrayRef{want})
      return make_error(errc::invalid_argument,
                        to_string(item.index) + ": tensor of shape "
                          + to_string(t->sizes().vec()) + " for a chunk of "
                          + to_string(want));
    auto type = to_dtype(t->scalar_type());
    if (!type)
      return with_context(type.error(), to_string(item.index));
    // A dtype libtorch lacks arrives in its carrier (state_dict::set_carried).
    const auto want_type = item.tensor_data.properties.type;
    if (*type != want_type && *type != carrier_dtype(want_type))
      return make_error(errc::dtype_mismatch,
                        to_string(item.index) + ": tensor of dtype "
                          + to_string(*type) + ", the plan says "
                          + to_string(want_type));
    res = write_tensor_item(out, *t, checksum, want_type);
  }
  if (!res)
    return with_context(res.error(), to_string(item.index));
  return res;
}

caf::error read_tensor_plan_item(const item_location& loc, dtype type,
                                 const shape_t& sizes,
                                 const std::vector<const read_item*>& reads,
                                 load_target& target, std::string_view checksum,
                                 const std::string& key, landing_mode landing) {
  auto reader = tensor_item_reader::open(loc);
  if (!reader)
    return with_context(reader.error(), key);
  if (auto err = reader->expect(type, sizes))
    return with_context(err, key);
  std::vector<chunk_copy> copies;
  copies.reserve(reads.size());
  for (auto r : reads) {
    auto dest = target.tensor(*r);
    if (!dest)
      return with_context(dest.error(), key);
    copies.push_back(
      chunk_copy{r->storage_offsets, r->lengths, std::move(*dest)});
  }
  if (auto err = reader->read_into(copies, checksum, landing))
    return with_context(err, key);
  return {};
}

caf::expected<at::Tensor> read_tensor_item(const std::string& path,
                                           uint64_t offset, uint64_t length,
                                           std::string_view checksum) {
  auto fd = detail::open_regular_file(path);
  if (!fd)
    return std::move(fd.error());
  item_location loc{fd->get(), path, offset, length};
  auto reader = tensor_item_reader::open(loc);
  caf::expected<at::Tensor> result{at::Tensor{}};
  if (!reader)
    result = std::move(reader.error());
  else
    result = reader->read_tensor(checksum);
  return result;
}

} // namespace dcpp
