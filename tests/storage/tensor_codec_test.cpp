#include "storage/tensor_codec.hpp"

#include "core/error.hpp"
#include "storage/metadata_codec.hpp"
#include "tests/storage/fs_test_util.hpp"
#include "tests/support/skip.hpp"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <random>

using namespace dcpp;
using namespace dcpp::fs_test;

namespace {

/// Bitwise CRC-32, the reference for the fast one.
uint32_t crc32_reference(const std::string& data) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) {
    c ^= b;
    for (int k = 0; k < 8; ++k)
      c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

/// Same dtype, shape and bits (NaN-safe, -0.0-safe).
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes())
    return false;
  auto x = a.contiguous();
  auto y = b.contiguous();
  auto n = static_cast<size_t>(x.numel() * x.element_size());
  return n == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), n) == 0;
}

at::Tensor f32(std::vector<float> xs) {
  return at::tensor(xs, at::kFloat);
}

/// The tensors both dcpp and Python build for the byte-identity test (the
/// Python script below builds the same ones under the same names).
std::map<std::string, at::Tensor> reference_tensors() {
  std::map<std::string, at::Tensor> d;
  d["f32"] = at::arange(6, at::kFloat).reshape({2, 3});
  d["bf16"] = f32({1.5f, -2.f, 3.25f, 0.5f}).to(at::kBFloat16);
  d["i64"] = at::tensor(std::vector<int64_t>{7, -1, int64_t{1} << 40},
                        at::kLong);
  d["f64_scalar"] = at::scalar_tensor(3.5, at::kDouble);
  d["f32_t"] = at::arange(12, at::kFloat).reshape({3, 4}).t();
  d["f16"] = (at::arange(5, at::kFloat) / 4).to(at::kHalf);
  d["i32"] = at::arange(-3, 3, at::kInt);
  d["i16"] = at::arange(-3, 3, at::kShort);
  d["i8"] = at::arange(-3, 3, at::kChar);
  d["u8"] = at::arange(0, 250, 7, at::kByte);
  d["bool"] = at::arange(3, at::kLong).remainder(2).eq(0);
  d["c64"] = at::complex(f32({1.f, 0.f}), f32({2.f, -3.5f}));
  d["c128"] = at::complex(f32({1.f, 0.f, 7.f}).to(at::kDouble),
                          f32({2.f, -3.5f, 0.f}).to(at::kDouble));
  d["4d"] = at::arange(120, at::kFloat).reshape({2, 3, 4, 5});
  d["n300"] = at::arange(300, at::kShort);
  d["n70000"] = at::ones({70000}, at::kChar);
  d["empty"] = at::zeros({0, 3}, at::kFloat);
  d["col"] = at::zeros({3, 1}, at::kFloat);
  d["perm3d"]
    = at::arange(24, at::kFloat).reshape({2, 3, 4}).permute({2, 0, 1});
  return d;
}

constexpr const char* reference_script = R"py(
import sys, io, zipfile, torch
def tensors():
    d = {}
    d['f32'] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    d['bf16'] = torch.tensor([1.5, -2.0, 3.25, 0.5]).to(torch.bfloat16)
    d['i64'] = torch.tensor([7, -1, 2**40], dtype=torch.int64)
    d['f64_scalar'] = torch.tensor(3.5, dtype=torch.float64)
    d['f32_t'] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    d['f16'] = (torch.arange(5, dtype=torch.float32) / 4).to(torch.float16)
    d['i32'] = torch.arange(-3, 3, dtype=torch.int32)
    d['i16'] = torch.arange(-3, 3, dtype=torch.int16)
    d['i8'] = torch.arange(-3, 3, dtype=torch.int8)
    d['u8'] = torch.arange(0, 250, 7, dtype=torch.uint8)
    d['bool'] = torch.arange(3).remainder(2).eq(0)
    d['c64'] = torch.complex(torch.tensor([1., 0.]), torch.tensor([2., -3.5]))
    d['c128'] = torch.complex(torch.tensor([1., 0., 7.]).double(),
                              torch.tensor([2., -3.5, 0.]).double())
    d['4d'] = torch.arange(120, dtype=torch.float32).reshape(2, 3, 4, 5)
    d['n300'] = torch.arange(300, dtype=torch.int16)
    d['n70000'] = torch.ones(70000, dtype=torch.int8)
    d['empty'] = torch.zeros(0, 3)
    d['col'] = torch.zeros(3, 1)
    d['perm3d'] = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).permute(2, 0, 1)
    # views that dcpp writes compactly (no whole storage)
    d['narrow'] = torch.arange(10, dtype=torch.float32)[2:5]
    d['cols'] = torch.arange(20, dtype=torch.float32).reshape(4, 5)[:, 1:3]
    d['expanded'] = torch.arange(3, dtype=torch.float32).expand(4, 3)
    d['rows'] = torch.arange(20, dtype=torch.float64).reshape(4, 5)[1:3]
    return d
mode, out = sys.argv[1], sys.argv[2]
d = tensors()
if mode == 'save':
    for name, t in d.items():
        with open(out + '/' + name + '.pt', 'wb') as f:
            torch.save(t, f)
else:
    data = open(out + '/all.distcp', 'rb').read()
    for line in open(out + '/all.idx'):
        name, off, ln = line.split()
        off, ln = int(off), int(ln)
        buf = data[off:off + ln]
        crc_ok = zipfile.ZipFile(io.BytesIO(buf)).testzip() is None
        t = torch.load(io.BytesIO(buf))
        ref = d[name]
        ok = (crc_ok and t.dtype == ref.dtype and t.shape == ref.shape
              and torch.equal(t, ref))
        if ref.is_contiguous() or name in ('f32_t', 'perm3d'):
            ok = ok and t.stride() == ref.stride()
        ok = ok and t.storage().size() == t.numel()
        print(name, 'OK' if ok else 'BAD dtype=%s shape=%s stride=%s crc=%s' % (
            t.dtype, tuple(t.shape), t.stride(), crc_ok))
)py";

/// Reads every `(offset, length)` item of the fixture checkpoint `dir` with
/// the metadata codec's help: storage index -> item bytes.
std::map<metadata_index, std::pair<std::string, storage_info>>
fixture_items(const std::string& dir) {
  std::map<metadata_index, std::pair<std::string, storage_info>> out;
  auto md = decode_metadata(read_file(dir + "/.metadata"));
  FS_REQUIRE(md);
  for (const auto& [idx, info] : md->storage_data) {
    auto file = read_file(dir + "/" + info.relative_path);
    REQUIRE(info.offset + info.length <= file.size());
    out.emplace(idx,
                std::make_pair(file.substr(info.offset, info.length), info));
  }
  return out;
}

/// What the fixture README says each key holds.
at::Tensor expected_fixture(const std::string& ckpt,
                            const metadata_index& idx) {
  const auto& fqn = idx.fqn;
  if (fqn == "f32")
    return at::arange(6, at::kFloat).reshape({2, 3});
  if (fqn == "bf16")
    return f32({1.5f, -2.f, 3.25f, 0.5f}).to(at::kBFloat16);
  if (fqn == "i64")
    return at::tensor(std::vector<int64_t>{7, -1, int64_t{1} << 40}, at::kLong);
  if (fqn == "f64_scalar")
    return at::scalar_tensor(3.5, at::kDouble);
  if (fqn == "f32_t")
    return at::arange(12, at::kFloat).reshape({3, 4}).t();
  if (fqn == "view")
    return f32({2.f, 3.f, 4.f});
  if (fqn == "st") {
    // The C++-written fixture points both chunks at its f32 item.
    if (ckpt.find("cpp_written") != std::string::npos)
      return at::arange(6, at::kFloat).reshape({2, 3});
    auto rows = at::arange(12, at::kFloat).reshape({4, 3}) + 0.5;
    return rows.narrow(0, idx.offset.at(0), 2);
  }
  FAIL("no expected value for " << fqn);
  return {};
}

} // namespace

TEST_CASE("crc32 matches the bitwise reference", "[tensor_codec]") {
  std::mt19937_64 rng{42};
  std::string data(5000, '\0');
  for (auto& c : data)
    c = static_cast<char>(rng());
  for (size_t n : {0, 1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000, 4999})
    for (size_t off : {0, 1, 7}) {
      if (off + n > data.size())
        continue;
      auto part = data.substr(off, n);
      auto ref = crc32_reference(part);
      CHECK(crc32(0, part.data(), part.size()) == ref);
      // Continuing over a split gives the same value.
      auto half = n / 3;
      auto c = crc32(crc32(0, part.data(), half), part.data() + half, n - half);
      CHECK(c == ref);
    }
  CHECK(crc32(0, "3\n", 2) == 0x55679ed1u);
}

TEST_CASE("every tensor item of every fixture checkpoint decodes",
          "[tensor_codec][fixtures]") {
  for (auto ckpt : {"ckpt_113_per_item", "ckpt_113_per_rank",
                    "ckpt_cpp_written", "ckpt_cpp_written_v2meta"}) {
    auto dir = fixture(ckpt);
    auto md = decode_metadata(read_file(dir + "/.metadata"));
    FS_REQUIRE(md);
    size_t tensors = 0;
    for (const auto& [idx, item] : fixture_items(dir)) {
      const auto& entry = md->state_dict_metadata.at(idx.fqn);
      if (entry.kind != item_kind::tensor)
        continue;
      ++tensors;
      INFO(ckpt << " " << to_string(idx));
      // From memory and from the file, through both the fresh-tensor and
      // the into-destination paths.
      auto reader = tensor_item_reader::open_memory(item.first, idx.fqn);
      FS_REQUIRE(reader);
      auto expected = expected_fixture(ckpt, idx);
      const chunk_storage_metadata* chunk = nullptr;
      for (const auto& c : entry.tensor.chunks)
        if (c.offsets == idx.offset)
          chunk = &c;
      REQUIRE(chunk != nullptr);
      CHECK(!reader->expect(entry.tensor.properties.type, chunk->sizes));
      auto t = reader->read_tensor();
      FS_REQUIRE(t);
      CHECK(same_bits(*t, expected));
      auto path = dir + "/" + item.second.relative_path;
      auto fd = ::open(path.c_str(), O_RDONLY);
      REQUIRE(fd >= 0);
      item_location loc{fd, path, item.second.offset, item.second.length};
      auto file_reader = tensor_item_reader::open(loc);
      FS_REQUIRE(file_reader);
      auto dest = at::empty(expected.sizes(), expected.options());
      shape_t zeros(static_cast<size_t>(dest.dim()), 0);
      FS_REQUIRE(
        file_reader->read_into({chunk_copy{zeros, dest.sizes().vec(), dest}}));
      CHECK(same_bits(dest, expected));
      ::close(fd);
    }
    CHECK(tensors >= 6);
  }
}

TEST_CASE("fixture f32_t keeps its strides and view keeps its offset",
          "[tensor_codec][fixtures]") {
  auto items = fixture_items(fixture("ckpt_113_per_rank"));
  auto& f32_t = items.at(metadata_index{"f32_t", {0, 0}}).first;
  auto r = tensor_item_reader::open_memory(f32_t, "f32_t");
  FS_REQUIRE(r);
  CHECK(r->layout().strides == shape_t{1, 4});
  CHECK(r->layout().data_offset % 64 == 0);
  auto cpp = fixture_items(fixture("ckpt_cpp_written"));
  auto& view = cpp.at(metadata_index{"view", {0}}).first;
  auto v = tensor_item_reader::open_memory(view, "view");
  FS_REQUIRE(v);
  CHECK(v->layout().storage_offset == 2);
  CHECK(v->layout().storage_numel == 10);
  // A sub-box of a saved view with a storage offset.
  auto dest = at::zeros({2}, at::kFloat);
  FS_REQUIRE(v->read_into({chunk_copy{{1}, {2}, dest}}));
  CHECK(same_bits(dest, f32({3.f, 4.f})));
}

TEST_CASE("dcpp writes the fixture's bytes for the same tensors",
          "[tensor_codec][fixtures]") {
  auto items = fixture_items(fixture("ckpt_113_per_rank"));
  for (const auto& [idx, item] : items) {
    if (idx.fqn == "epoch" || idx.fqn == "cfg")
      continue;
    INFO(to_string(idx));
    auto expected = expected_fixture("ckpt_113_per_rank", idx);
    auto bytes = encode_tensor_item(expected);
    FS_REQUIRE(bytes);
    CHECK(bytes->size() == item.first.size());
    CHECK(*bytes == item.first);
  }
}

TEST_CASE("dcpp items equal Python torch.save byte for byte",
          "[tensor_codec][python]") {
  if (!have_torch_python())
    DCPP_SKIP(torch_python() << " cannot import torch");
  temp_dir tmp;
  auto res = run_python(tmp.path(), reference_script, "save " + tmp.path());
  REQUIRE(res.status == 0);
  for (const auto& [name, t] : reference_tensors()) {
    INFO(name);
    auto py = read_file(tmp / (name + ".pt"));
    auto ours = encode_tensor_item(t);
    FS_REQUIRE(ours);
    CHECK(ours->size() == py.size());
    CHECK(*ours == py);
  }
}

TEST_CASE("Python reads dcpp items, CRCs included", "[tensor_codec][python]") {
  if (!have_torch_python())
    DCPP_SKIP(torch_python() << " cannot import torch");
  temp_dir tmp;
  auto tensors = reference_tensors();
  tensors["narrow"] = at::arange(10, at::kFloat).narrow(0, 2, 3);
  tensors["cols"] = at::arange(20, at::kFloat).reshape({4, 5}).narrow(1, 1, 2);
  tensors["expanded"] = at::arange(3, at::kFloat).expand({4, 3});
  tensors["rows"] = at::arange(20, at::kDouble).reshape({4, 5}).narrow(0, 1, 2);
  string_sink sink;
  std::string index;
  for (const auto& [name, t] : tensors) {
    auto offset = sink.buffer().size();
    auto res = write_tensor_item(sink, t);
    FS_REQUIRE(res);
    CHECK(res->length == sink.buffer().size() - offset);
    CHECK(res->checksum
          == item_checksum(std::string_view{sink.buffer()}.substr(offset)));
    index += name + " " + std::to_string(offset) + " "
             + std::to_string(res->length) + "\n";
  }
  write_file(tmp / "all.distcp", sink.buffer());
  write_file(tmp / "all.idx", index);
  auto res = run_python(tmp.path(), reference_script, "load " + tmp.path());
  INFO(res.output);
  REQUIRE(res.status == 0);
  for (const auto& [name, t] : tensors)
    CHECK(res.output.find(name + " OK\n") != std::string::npos);
  CHECK(res.output.find("BAD") == std::string::npos);
}

TEST_CASE("records are 64-byte aligned and match libtorch's stream writer",
          "[tensor_codec]") {
  for (const auto& [name, t] : reference_tensors()) {
    INFO(name);
    auto bytes = encode_tensor_item(t);
    FS_REQUIRE(bytes);
    auto r = tensor_item_reader::open_memory(*bytes, name);
    FS_REQUIRE(r);
    CHECK(r->layout().data_offset % 64 == 0);
    // libtorch's PyTorchStreamWriter with the same records, same order.
    std::string pkl_data;
    {
      // data.pkl is the first record's data: find it from the local header.
      auto name_len = static_cast<unsigned char>((*bytes)[26])
                      | (static_cast<unsigned char>((*bytes)[27]) << 8);
      auto extra_len = static_cast<unsigned char>((*bytes)[28])
                       | (static_cast<unsigned char>((*bytes)[29]) << 8);
      auto start = 30 + name_len + extra_len;
      CHECK(start % 64 == 0);
      auto end = bytes->find(std::string{"PK\x07\x08", 4}, start);
      REQUIRE(end != std::string::npos);
      pkl_data = bytes->substr(start, end - start);
    }
    std::string theirs;
    caffe2::serialize::PyTorchStreamWriter w{[&](const void* p, size_t n) {
      theirs.append(static_cast<const char*>(p), n);
      return n;
    }};
    auto c = t.is_non_overlapping_and_dense() ? t : t.contiguous();
    w.writeRecord("data.pkl", pkl_data.data(), pkl_data.size());
    w.writeRecord("data/0", c.data_ptr(),
                  static_cast<size_t>(c.numel() * c.element_size()));
    w.writeEndOfFile();
    CHECK(theirs == *bytes);
  }
}

TEST_CASE("round trip of every dtype, 0-d, strided and offset views",
          "[tensor_codec]") {
  auto tensors = reference_tensors();
  tensors["narrow"] = at::arange(10, at::kFloat).narrow(0, 2, 3);
  tensors["cols"] = at::arange(20, at::kFloat).reshape({4, 5}).narrow(1, 1, 2);
  tensors["expanded"] = at::arange(3, at::kFloat).expand({4, 3});
  tensors["nan"] = f32({std::nanf(""), -0.f, INFINITY});
  tensors["big"] = at::randn({700, 1000}, at::kFloat); // 2.8 MB: block paths
  tensors["bool0d"] = at::scalar_tensor(true, at::kBool);
  for (const auto& [name, t] : tensors) {
    INFO(name);
    auto bytes = encode_tensor_item(t);
    FS_REQUIRE(bytes);
    auto sum = item_checksum(*bytes);
    auto r = tensor_item_reader::open_memory(*bytes, name);
    FS_REQUIRE(r);
    auto back = r->read_tensor(sum);
    FS_REQUIRE(back);
    CHECK(same_bits(*back, t));
    // Dense tensors keep their strides.
    if (t.is_non_overlapping_and_dense())
      CHECK(back->strides() == t.strides());
    // Into a contiguous destination, a strided one and a cast one.
    auto dest = at::empty(t.sizes(), t.options());
    shape_t zeros(static_cast<size_t>(t.dim()), 0);
    FS_REQUIRE(r->read_into({chunk_copy{zeros, t.sizes().vec(), dest}}, sum));
    CHECK(same_bits(dest, t));
    if (t.dim() == 2) {
      auto strided = at::empty({t.size(1), t.size(0)}, t.options()).t();
      FS_REQUIRE(r->read_into({chunk_copy{zeros, t.sizes().vec(), strided}}));
      CHECK(same_bits(strided, t));
    }
    if (t.scalar_type() == at::kFloat) {
      auto cast = at::empty(t.sizes(), at::kDouble);
      FS_REQUIRE(r->read_into({chunk_copy{zeros, t.sizes().vec(), cast}}, sum));
      CHECK(same_bits(cast, t.to(at::kDouble)));
    }
  }
}

TEST_CASE("torch 2.x dtypes are written and read in their carriers",
          "[tensor_codec]") {
  // uint16 bits in an int16 carrier: the item is 2.x's _rebuild_tensor_v3
  // over an UntypedStorage of 6 bytes, and reads back as those bits.
  auto carrier
    = at::tensor(std::vector<int64_t>{1, 40000 - 65536, -1}).to(at::kShort);
  string_sink out;
  FS_REQUIRE(write_tensor_item(out, carrier, false, dtype::uint16));
  const auto& bytes = out.buffer();
  CHECK(bytes.find("_rebuild_tensor_v3") != std::string::npos);
  CHECK(bytes.find("UntypedStorage") != std::string::npos);
  CHECK(bytes.find("uint16") != std::string::npos);
  auto r = tensor_item_reader::open_memory(bytes, "u16");
  FS_REQUIRE(r);
  CHECK(r->layout().type == dtype::uint16);
  CHECK(r->layout().storage_numel == 3);
  auto back = r->read_tensor({});
  FS_REQUIRE(back);
  CHECK(same_bits(*back, carrier));
  auto dest = at::empty({3}, at::kShort);
  FS_REQUIRE(r->read_into({chunk_copy{{0}, {3}, dest}}, {}));
  CHECK(same_bits(dest, carrier));
  // A carrier of another element size is refused.
  string_sink bad;
  auto res = write_tensor_item(bad, carrier, false, dtype::float8_e5m2);
  REQUIRE_FALSE(res);
  CHECK(code_of(res.error()) == errc::dtype_mismatch);
}

TEST_CASE("sub-boxes: leading-dim slices, inner boxes, several at once",
          "[tensor_codec]") {
  auto t = at::arange(6 * 5 * 4, at::kInt).reshape({6, 5, 4});
  for (bool transposed : {false, true}) {
    auto src = transposed ? t.permute({2, 1, 0}).contiguous().permute({2, 1, 0})
                          : t;
    REQUIRE(src.equal(t));
    auto bytes = encode_tensor_item(src);
    FS_REQUIRE(bytes);
    auto sum = item_checksum(*bytes);
    auto r = tensor_item_reader::open_memory(*bytes, "t");
    FS_REQUIRE(r);
    for (auto checksum : {std::string{}, sum}) {
      INFO("transposed " << transposed << " checksum " << checksum);
      // Rows [1, 3) (direct for the contiguous save), an inner box, a
      // single element and rows [4, 6) all at once.
      auto rows = at::zeros({2, 5, 4}, at::kInt);
      auto inner = at::zeros({3, 2, 2}, at::kInt);
      auto one = at::zeros({1, 1, 1}, at::kInt);
      auto last = at::zeros({2, 5, 4}, at::kInt);
      std::vector<chunk_copy> copies{
        {{1, 0, 0}, {2, 5, 4}, rows},
        {{2, 1, 1}, {3, 2, 2}, inner},
        {{5, 4, 3}, {1, 1, 1}, one},
        {{4, 0, 0}, {2, 5, 4}, last},
      };
      FS_REQUIRE(r->read_into(copies, checksum));
      CHECK(rows.equal(t.narrow(0, 1, 2)));
      CHECK(inner.equal(t.narrow(0, 2, 3).narrow(1, 1, 2).narrow(2, 1, 2)));
      CHECK(one.equal(t.narrow(0, 5, 1).narrow(1, 4, 1).narrow(2, 3, 1)));
      CHECK(last.equal(t.narrow(0, 4, 2)));
      // Overlapping destinations of the same source rows.
      auto a = at::zeros({3, 5, 4}, at::kInt);
      auto b = at::zeros({3, 5, 4}, at::kInt);
      FS_REQUIRE(r->read_into(
        {{{0, 0, 0}, {3, 5, 4}, a}, {{1, 0, 0}, {3, 5, 4}, b}}, checksum));
      CHECK(a.equal(t.narrow(0, 0, 3)));
      CHECK(b.equal(t.narrow(0, 1, 3)));
    }
    // Bad boxes and destinations.
    auto dest = at::zeros({2, 5, 4}, at::kInt);
    CHECK(code_of(r->read_into({{{5, 0, 0}, {2, 5, 4}, dest}}))
          == errc::invalid_argument);
    CHECK(code_of(r->read_into({{{0, 0}, {2, 5}, dest}}))
          == errc::invalid_argument);
    CHECK(code_of(r->read_into({{{0, 0, 0}, {2, 5, 3}, dest}}))
          == errc::shape_mismatch);
    CHECK(code_of(r->expect(dtype::float32, {6, 5, 4})) == errc::corrupt_item);
    CHECK(code_of(r->expect(dtype::int32, {6, 5})) == errc::corrupt_item);
    CHECK(!r->expect(dtype::int32, {6, 5, 4}));
  }
}

TEST_CASE("items in a file: large ones, odd offsets, checksums",
          "[tensor_codec]") {
  temp_dir tmp;
  auto path = tmp / "items.distcp";
  auto fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  std::vector<at::Tensor> tensors{
    at::arange(5, at::kFloat),
    at::randn({1 << 20}, at::kFloat), // 4 MiB: probes and blocks
    at::randn({300, 200}, at::kDouble).t(),
    at::scalar_tensor(7, at::kLong),
  };
  std::vector<std::pair<uint64_t, item_result>> written;
  {
    file_sink_options opts;
    opts.early_writeback = true;
    file_sink sink{fd, path, 0, opts};
    std::string junk = "xyz"; // items need no alignment inside the file
    FS_REQUIRE(sink.append(junk.data(), junk.size()));
    auto bytes = write_bytes_item(sink, "opaque bytes item");
    FS_REQUIRE(bytes);
    CHECK(bytes->checksum == item_checksum("opaque bytes item"));
    for (const auto& t : tensors) {
      auto off = sink.position();
      auto res = write_tensor_item(sink, t);
      FS_REQUIRE(res);
      written.emplace_back(off, *res);
    }
    FS_REQUIRE(sink.flush());
    CHECK(sink.position() == static_cast<uint64_t>(::lseek(fd, 0, SEEK_END)));
  }
  auto bytes = read_item_bytes({fd, path, 3, 17},
                               item_checksum("opaque bytes item"));
  FS_REQUIRE(bytes);
  CHECK(*bytes == "opaque bytes item");
  for (size_t i = 0; i < tensors.size(); ++i) {
    INFO(i);
    item_location loc{fd, path, written[i].first, written[i].second.length};
    auto sum = compute_item_checksum(loc);
    FS_REQUIRE(sum);
    CHECK(*sum == written[i].second.checksum);
    auto r = tensor_item_reader::open(loc);
    FS_REQUIRE(r);
    auto t = r->read_tensor(*sum);
    FS_REQUIRE(t);
    CHECK(same_bits(*t, tensors[i]));
    auto whole = read_tensor_item(path, loc.offset, loc.length, *sum);
    FS_REQUIRE(whole);
    CHECK(same_bits(*whole, tensors[i]));
  }
  // A flipped byte in the big tensor's data: caught by the checksum only.
  item_location big{fd, path, written[1].first, written[1].second.length};
  char c;
  auto pos = static_cast<off_t>(big.offset + big.length / 2);
  REQUIRE(::pread(fd, &c, 1, pos) == 1);
  c = static_cast<char>(c ^ 0x10);
  REQUIRE(::pwrite(fd, &c, 1, pos) == 1);
  auto r = tensor_item_reader::open(big);
  FS_REQUIRE(r);
  auto dest = at::empty({1 << 20}, at::kFloat);
  auto err = r->read_into({{{0}, {1 << 20}, dest}}, written[1].second.checksum);
  CHECK(code_of(err) == errc::checksum_mismatch);
  CHECK(context_of(err).find(path) != std::string::npos);
  CHECK(!r->read_into({{{0}, {1 << 20}, dest}}));
  CHECK(code_of(r->read_tensor(written[1].second.checksum).error())
        == errc::checksum_mismatch);
  CHECK(code_of(r->read_tensor("crc32:1234").error()) == errc::unsupported);
  ::close(fd);
}

TEST_CASE("direct-I/O sinks: many buffers, flushes in between",
          "[tensor_codec]") {
  temp_dir tmp;
  auto path = tmp / "direct.distcp";
  auto fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  if (fd < 0)
    DCPP_SKIP("the file system of " << tmp.path() << " refuses O_DIRECT");
  std::vector<at::Tensor> tensors{
    at::arange(5, at::kFloat),
    at::randn({5 << 20}, at::kFloat), // 20 MiB: several staging buffers
    at::randn({1000}, at::kDouble),
    at::randn({3 << 20}, at::kFloat),
  };
  std::vector<std::pair<uint64_t, item_result>> written;
  {
    file_sink_options opts;
    opts.direct = true;
    file_sink sink{fd, path, 0, opts};
    for (size_t i = 0; i < tensors.size(); ++i) {
      auto off = sink.position();
      auto res = write_tensor_item(sink, tensors[i]);
      FS_REQUIRE(res);
      written.emplace_back(off, *res);
      if (i == 0) // a flush in the middle pads and truncates; appends go on
        FS_REQUIRE(sink.flush());
    }
    auto bytes = write_bytes_item(sink, "tail");
    FS_REQUIRE(bytes);
    FS_REQUIRE(sink.flush());
    CHECK(sink.position() == static_cast<uint64_t>(::lseek(fd, 0, SEEK_END)));
  }
  ::close(fd);
  auto data = read_file(path);
  CHECK(data.substr(data.size() - 4) == "tail");
  for (size_t i = 0; i < tensors.size(); ++i) {
    INFO(i);
    auto item = std::string_view{data}.substr(written[i].first,
                                              written[i].second.length);
    CHECK(item_checksum(item) == written[i].second.checksum);
    auto r = tensor_item_reader::open_memory(item, "direct");
    FS_REQUIRE(r);
    auto t = r->read_tensor(written[i].second.checksum);
    FS_REQUIRE(t);
    CHECK(same_bits(*t, tensors[i]));
  }
}

TEST_CASE("hostile items never crash the reader", "[tensor_codec][hostile]") {
  auto items = fixture_items(fixture("ckpt_113_per_rank"));
  auto good = items.at(metadata_index{"f32_t", {0, 0}}).first;
  auto sum = item_checksum(good);
  size_t errors = 0;
  auto probe = [&](const std::string& bytes) {
    auto r = tensor_item_reader::open_memory(bytes, "hostile");
    if (!r) {
      auto code = code_of(r.error());
      CHECK((code == errc::corrupt_item || code == errc::unsupported));
      ++errors;
      return;
    }
    // Whatever it decoded is bounded by the item and readable.
    CHECK(r->layout().data_offset + r->layout().data_size <= bytes.size());
    auto t = r->read_tensor(sum);
    if (!t)
      ++errors;
    auto u = r->read_tensor();
    CHECK(ok(u));
  };
  // Every truncation.
  for (size_t n = 0; n < good.size(); ++n)
    probe(good.substr(0, n));
  // Every single-byte change, three ways.
  for (size_t i = 0; i < good.size(); ++i)
    for (unsigned char x : {0x01, 0x80, 0xFF}) {
      auto bad = good;
      bad[i] = static_cast<char>(bad[i] ^ x);
      probe(bad);
    }
  // Random garbage with a valid-looking end record.
  std::mt19937_64 rng{7};
  for (int k = 0; k < 200; ++k) {
    std::string junk(100 + rng() % 900, '\0');
    for (auto& ch : junk)
      ch = static_cast<char>(rng());
    probe(junk);
    junk.replace(junk.size() - 22, 4, "PK\x05\x06");
    junk[junk.size() - 2] = 0;
    junk[junk.size() - 1] = 0;
    probe(junk);
  }
  CHECK(errors > good.size());
}

TEST_CASE("a record of 4 GiB and more uses Zip64 like libtorch",
          "[.][tensor_codec][zip64]") {
  // 4 GiB + 100 bytes of zeros from untouched anonymous memory.
  size_t big = (size_t{1} << 32) + 100;
  void* p = ::mmap(nullptr, big, PROT_READ,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  REQUIRE(p != MAP_FAILED);
  auto t = at::from_blob(p, {static_cast<int64_t>(big)}, at::kByte);
  /// Keeps everything but the bulk data.
  struct capture_sink : item_sink {
    const char* bulk = nullptr;
    size_t bulk_size = 0;
    std::string bytes;
    uint64_t skipped = 0;
    caf::error append(const void* data, size_t size) override {
      auto p = static_cast<const char*>(data);
      if (p >= bulk && p < bulk + bulk_size)
        skipped += size;
      else
        bytes.append(static_cast<const char*>(data), size);
      return {};
    }
  } ours;
  ours.bulk = static_cast<const char*>(p);
  ours.bulk_size = big;
  auto res = write_tensor_item(ours, t, false);
  FS_REQUIRE(res);
  CHECK(ours.skipped == big);
  capture_sink theirs;
  theirs.bulk = ours.bulk;
  theirs.bulk_size = big;
  {
    auto pkl_start = 64;
    auto pkl_end = ours.bytes.find(std::string{"PK\x07\x08", 4});
    auto pkl = ours.bytes.substr(pkl_start, pkl_end - pkl_start);
    caffe2::serialize::PyTorchStreamWriter w{[&](const void* d, size_t n) {
      auto err = theirs.append(d, n);
      CHECK(!err);
      return n;
    }};
    w.writeRecord("data.pkl", pkl.data(), pkl.size());
    w.writeRecord("data/0", p, big);
    w.writeEndOfFile();
  }
  CHECK(theirs.skipped == big);
  CHECK(ours.bytes == theirs.bytes);
  ::munmap(p, big);
}
