// The safetensors storage backend (storage/safetensors.hpp).

#include "storage/safetensors.hpp"

#include "core/error.hpp"
#include "core/planner.hpp"
#include "storage/checksum.hpp"
#include "storage/posix_file.hpp"
#include "storage/safetensors_header.hpp"
#include "storage/state_dict.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <optional>
#include <random>
#include <set>

namespace dcpp {

namespace {

using detail::fd_guard;
using detail::os_error;
using json = nlohmann::json;

constexpr const char* part_prefix = ".dcpp-";
constexpr const char* part_suffix = ".part";
constexpr const char* index_suffix = ".index.json";
constexpr const char* default_file = "model.safetensors";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size()
         && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string join(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".."
         && name.find('/') == std::string::npos
         && name.find('\0') == std::string::npos;
}

/// A save tag that orders saves by start time: 16 hex digits of
/// nanoseconds since the epoch, then 8 random ones.
std::string make_tag() {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
              std::chrono::system_clock::now().time_since_epoch())
              .count();
  static std::mutex mx;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t r = 0;
  {
    std::lock_guard<std::mutex> guard{mx};
    r = rng();
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016llx%08llx",
                static_cast<unsigned long long>(ns),
                static_cast<unsigned long long>(r & 0xffffffffu));
  return buf;
}

caf::error write_all(int fd, const char* data, size_t size,
                     const std::string& path) {
  uint64_t done = 0;
  if (auto err = detail::write_fully(fd, data, size, done))
    return os_error("write", path, err < 0 ? ENOSPC : err);
  return caf::none;
}

caf::expected<std::string> read_range(int fd, uint64_t offset, uint64_t size,
                                      const std::string& path) {
  std::string buf(size, '\0');
  uint64_t done = 0;
  if (auto err = detail::pread_fully(fd, buf.data(), size, offset, done))
    return err < 0
             ? make_error(errc::corrupt_item, path + ": ends before byte "
                                                + std::to_string(offset + size))
             : os_error("read", path, err);
  return buf;
}

std::string describe_shape(const shape_t& s) {
  return to_string(s);
}

// -- reading ------------------------------------------------------------------

struct parsed_file {
  std::string name;
  safetensors_header header;
};

caf::expected<parsed_file> parse_file(const std::string& dir,
                                      const std::string& name) {
  auto path = join(dir, name);
  auto opened = detail::open_regular_file(path);
  if (!opened)
    return opened.error();
  struct stat st;
  if (::fstat(opened->get(), &st) != 0)
    return os_error("stat", path, errno);
  auto size = static_cast<uint64_t>(st.st_size);
  std::string first8(8, '\0');
  if (size >= 8) {
    auto r = read_range(opened->get(), 0, 8, path);
    if (!r)
      return r.error();
    first8 = *r;
  }
  auto n = safetensors_header_length(first8, size, path);
  if (!n)
    return n.error();
  auto text = read_range(opened->get(), 8, *n, path);
  if (!text)
    return text.error();
  auto header = decode_safetensors_header(*text, size, path);
  if (!header)
    return header.error();
  return parsed_file{name, std::move(*header)};
}

/// The files of the checkpoint at `path`: (directory, file names, from an
/// index?).
struct layout {
  std::string dir;
  std::vector<std::string> files;
  /// tensor -> file, from an index; empty without one.
  std::map<std::string, std::string> weight_map;
  bool indexed = false;
};

caf::expected<layout> resolve(const std::string& path) {
  layout l;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return make_error(errc::not_found, path
                                         + ": no safetensors file, index "
                                           "or directory holding one");
  std::string index;
  if (S_ISDIR(st.st_mode)) {
    l.dir = path;
    auto idx = join(path, std::string{default_file} + index_suffix);
    if (exists(idx)) {
      index = idx;
    } else if (exists(join(path, default_file))) {
      l.files.push_back(default_file);
      return l;
    } else {
      return make_error(errc::not_found,
                        path
                          + ": holds neither model.safetensors nor "
                            "model.safetensors.index.json");
    }
  } else {
    auto slash = path.rfind('/');
    l.dir = slash == std::string::npos ? "." : path.substr(0, slash);
    auto name = slash == std::string::npos ? path : path.substr(slash + 1);
    if (!ends_with(name, ".json")) {
      l.files.push_back(name);
      return l;
    }
    index = path;
  }
  l.indexed = true;
  auto opened = detail::open_regular_file(index);
  if (!opened)
    return opened.error();
  if (::fstat(opened->get(), &st) != 0)
    return os_error("stat", index, errno);
  if (static_cast<uint64_t>(st.st_size) > safetensors_max_header)
    return make_error(errc::too_large, index + ": index of "
                                         + std::to_string(st.st_size)
                                         + " bytes exceeds the limit");
  auto text = read_range(opened->get(), 0, static_cast<uint64_t>(st.st_size),
                         index);
  if (!text)
    return text.error();
  auto doc = json::parse(*text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    return make_error(errc::corrupt_item, index + ": not a JSON object");
  auto wm = doc.find("weight_map");
  if (wm == doc.end() || !wm->is_object())
    return make_error(errc::corrupt_item, index + ": no \"weight_map\" object");
  std::set<std::string> files;
  for (auto& [name, file] : wm->items()) {
    if (!file.is_string() || !plain_name(file.get<std::string>()))
      return make_error(errc::path_escape,
                        index + ": tensor '" + name
                          + "' maps to something other than a file name "
                            "in the index's directory");
    l.weight_map[name] = file.get<std::string>();
    files.insert(file.get<std::string>());
  }
  l.files.assign(files.begin(), files.end());
  return l;
}

} // namespace

bool is_safetensors_path(const std::string& path) {
  if (ends_with(path, ".safetensors")
      || ends_with(path, std::string{".safetensors"} + index_suffix))
    return true;
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)
         && !exists(join(path, ".metadata"))
         && (exists(join(path, default_file))
             || exists(join(path, std::string{default_file} + index_suffix)));
}

namespace {

/// Reads and validates every header; `bytes` receives the bytes items.
caf::expected<safetensors_info>
read_info(const std::string& path, std::map<std::string, std::string>* bytes,
          std::string* dir_out) {
  auto l = resolve(path);
  if (!l)
    return l.error();
  safetensors_info info;
  info.files = l->files;
  std::set<std::string> seen;
  for (const auto& file : l->files) {
    auto parsed = parse_file(l->dir, file);
    if (!parsed)
      return parsed.error();
    auto& h = parsed->header;
    for (const auto& e : h.tensors) {
      if (!seen.insert(e.name).second)
        return make_error(errc::conflicting_item,
                          join(l->dir, file) + ": tensor '" + e.name
                            + "' appears in more than one file");
      if (l->indexed) {
        auto i = l->weight_map.find(e.name);
        if (i == l->weight_map.end() || i->second != file)
          return make_error(errc::corrupt_item,
                            join(l->dir, file) + ": tensor '" + e.name
                              + "' is not mapped to this file by the index");
      }
      item_metadata item;
      item.tensor.properties.type = e.type;
      item.tensor.size = e.shape;
      shape_t zeros(e.shape.size(), 0);
      item.tensor.chunks.push_back({zeros, e.shape});
      info.md.state_dict_metadata[e.name] = std::move(item);
      storage_info si;
      si.relative_path = file;
      si.offset = h.data_start + e.begin;
      si.length = e.end - e.begin;
      info.md.storage_data[metadata_index{e.name, zeros}] = si;
      info.dtype_names[e.name] = *safetensors_dtype_name(e.type);
    }
    for (const auto& [k, v] : h.metadata) {
      auto prefix = std::string{safetensors_bytes_prefix};
      if (k.rfind(prefix, 0) != 0) {
        info.user_metadata[k] = v;
        continue;
      }
      auto fqn = k.substr(prefix.size());
      auto data = base64_decode(v);
      if (!data)
        return with_context(data.error(),
                            join(l->dir, file) + ": __metadata__ '" + k + "'");
      if (!seen.insert(fqn).second)
        return make_error(errc::conflicting_item,
                          join(l->dir, file) + ": key '" + fqn
                            + "' appears more than once");
      info.md.state_dict_metadata[fqn] = item_metadata::bytes();
      storage_info si;
      si.relative_path = file;
      si.length = data->size();
      info.md.storage_data[metadata_index{fqn}] = si;
      if (bytes)
        (*bytes)[fqn] = std::move(*data);
    }
  }
  if (l->indexed)
    for (const auto& [name, file] : l->weight_map)
      if (seen.count(name) == 0)
        return make_error(errc::corrupt_item,
                          join(l->dir, file) + ": tensor '" + name
                            + "' of the index is missing from the file");
  if (dir_out)
    *dir_out = l->dir;
  return info;
}

class safetensors_reader final : public storage_reader {
public:
  explicit safetensors_reader(std::string path) : path_(std::move(path)) {
    // nop
  }

  caf::expected<metadata> read_metadata() override {
    std::map<std::string, std::string> bytes;
    std::string dir;
    auto info = read_info(path_, &bytes, &dir);
    if (!info)
      return info.error();
    std::lock_guard<std::mutex> guard{mx_};
    bytes_ = std::move(bytes);
    dir_ = dir;
    read_ = true;
    return info->md;
  }

  caf::error set_up(const metadata& md, bool, int32_t) override {
    bool read = false;
    {
      std::lock_guard<std::mutex> guard{mx_};
      read = read_;
    }
    if (!read) {
      auto own = read_metadata();
      if (!own)
        return own.error();
    }
    std::lock_guard<std::mutex> guard{mx_};
    md_ = md;
    return caf::none;
  }

  caf::error read_data(const load_plan& plan, load_target& target) override {
    std::map<std::string, fd_guard> fds;
    for (const auto& item : plan.items) {
      auto si = md_.storage_data.find(item.storage_index);
      if (si == md_.storage_data.end())
        return make_error(errc::missing_key,
                          "no storage for " + to_string(item.storage_index));
      const auto& fqn = item.storage_index.fqn;
      if (item.type == load_item_type::bytes) {
        std::string data;
        {
          std::lock_guard<std::mutex> guard{mx_};
          auto i = bytes_.find(fqn);
          if (i == bytes_.end())
            return make_error(errc::missing_key, "no bytes value " + fqn);
          data = i->second;
        }
        if (auto err = target.set_bytes(item, std::move(data)))
          return err;
        continue;
      }
      auto tm = md_.state_dict_metadata.find(fqn);
      if (tm == md_.state_dict_metadata.end()
          || tm->second.kind != item_kind::tensor)
        return make_error(errc::missing_key, "no tensor " + fqn);
      const auto& t = tm->second.tensor;
      const auto& file = si->second.relative_path;
      if (!plain_name(file))
        return make_error(errc::path_escape,
                          fqn + ": '" + file + "' is not a file name");
      auto path = join(dir_, file);
      auto fd = fds.find(file);
      if (fd == fds.end()) {
        auto opened = detail::open_regular_file(path);
        if (!opened)
          return with_context(opened.error(), fqn);
        fd = fds.emplace(file, std::move(*opened)).first;
      }
      if (auto err = read_box(fd->second.get(), path, fqn, t, si->second, item,
                              target))
        return err;
    }
    return caf::none;
  }

private:
  static caf::error
  read_box(int fd, const std::string& path, const std::string& fqn,
           const tensor_storage_metadata& t, const storage_info& si,
           const read_item& item, load_target& target) {
    auto ndim = t.size.size();
    if (item.storage_offsets.size() != ndim || item.lengths.size() != ndim)
      return make_error(errc::shape_mismatch,
                        fqn + ": read box of rank "
                          + std::to_string(item.lengths.size())
                          + " for a tensor of rank " + std::to_string(ndim));
    auto esize = element_size(t.properties.type);
    uint64_t row = esize;
    for (size_t d = 1; d < ndim; ++d)
      row *= static_cast<uint64_t>(t.size[d]);
    shape_t box = t.size;
    uint64_t first = 0;
    if (ndim > 0) {
      if (item.storage_offsets[0] < 0 || item.lengths[0] < 0
          || item.storage_offsets[0] + item.lengths[0] > t.size[0])
        return make_error(errc::chunk_out_of_bounds,
                          fqn + ": rows outside the saved tensor");
      first = static_cast<uint64_t>(item.storage_offsets[0]);
      box[0] = item.lengths[0];
    }
    uint64_t count = ndim > 0 ? static_cast<uint64_t>(box[0]) * row : row;
    if (first * row + count > si.length)
      return make_error(errc::corrupt_item,
                        path + ": tensor '" + fqn + "' box beyond its data");
    auto dest = target.tensor(item);
    if (!dest)
      return dest.error();
    try {
      auto src = at::empty(box, at::TensorOptions{}.dtype(
                                  to_scalar_type(t.properties.type)));
      uint64_t done = 0;
      if (count > 0) {
        if (auto err
            = detail::pread_fully(fd, static_cast<char*>(src.data_ptr()), count,
                                  si.offset + first * row, done))
          return err < 0 ? make_error(errc::corrupt_item,
                                      path + ": tensor '" + fqn
                                        + "': the file ends early")
                         : os_error("read", path, err);
      }
      for (size_t d = 1; d < ndim; ++d)
        src = src.narrow(static_cast<int64_t>(d), item.storage_offsets[d],
                         item.lengths[d]);
      if (src.sizes() != dest->sizes())
        return make_error(
          errc::shape_mismatch,
          fqn + ": source box " + describe_shape(src.sizes().vec())
            + " vs destination " + describe_shape(dest->sizes().vec()));
      dest->copy_(src);
    } catch (const c10::Error& ex) {
      return make_error(errc::corrupt_item, path + ": tensor '" + fqn + "': "
                                              + ex.what_without_backtrace());
    }
    return caf::none;
  }

  std::string path_;
  std::mutex mx_;
  bool read_ = false;
  std::string dir_;
  std::map<std::string, std::string> bytes_;
  metadata md_;
};

// -- writing ------------------------------------------------------------------

class safetensors_writer final : public storage_writer {
public:
  safetensors_writer(std::string dir, safetensors_writer_options opts)
    : dir_(std::move(dir)), opts_(std::move(opts)) {
    if (opts_.file_name.empty())
      opts_.file_name = default_file;
  }

  caf::error set_up(bool, int32_t rank) override {
    rank_ = rank;
    std::lock_guard<std::mutex> guard{mx_};
    written_.clear();
    return caf::none;
  }

  caf::expected<save_plan> prepare_local_plan(save_plan plan) override {
    for (const auto& item : plan.items) {
      if (item.type == write_item_type::bytes)
        continue;
      if (auto name = safetensors_dtype_name(item.tensor_data.properties.type);
          !name)
        return with_context(name.error(), item.index.fqn);
    }
    return plan;
  }

  caf::expected<std::vector<save_plan>>
  prepare_global_plan(std::vector<save_plan> plans) override {
    auto tag = make_tag();
    for (size_t i = 0; i < plans.size(); ++i)
      plans[i].storage_data = tag + "-rank" + std::to_string(i);
    return plans;
  }

  caf::expected<std::vector<write_result>>
  write_data(const save_plan& plan, const item_source& source) override {
    if (::mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST)
      return os_error("mkdir", dir_, errno);
    auto name = part_prefix + plan.storage_data + "-"
                + std::to_string(serial_++) + part_suffix;
    auto path = join(dir_, name);
    fd_guard fd{detail::create_exclusive(path, O_WRONLY | O_CLOEXEC, 0644)};
    if (fd.get() < 0)
      return os_error("create", path, errno);
    {
      std::lock_guard<std::mutex> guard{mx_};
      written_.push_back(path);
    }
    std::vector<write_result> results;
    uint64_t offset = 0;
    for (const auto& item : plan.items) {
      std::string_view data;
      at::Tensor t;
      if (item.type == write_item_type::bytes) {
        auto b = source.bytes(item);
        if (!b)
          return b.error();
        data = *b;
      } else {
        auto x = source.tensor(item);
        if (!x)
          return x.error();
        try {
          t = x->detach().contiguous();
        } catch (const c10::Error& ex) {
          return make_error(errc::storage_failure,
                            to_string(item.index) + ": "
                              + ex.what_without_backtrace());
        }
        data = {static_cast<const char*>(t.data_ptr()), t.nbytes()};
      }
      if (auto err = write_all(fd.get(), data.data(), data.size(), path))
        return err;
      write_result res;
      res.index = item.index;
      res.size_in_bytes = data.size();
      res.storage_data.relative_path = name;
      res.storage_data.offset = offset;
      res.storage_data.length = data.size();
      res.storage_data.checksum = item_checksum(data);
      offset += data.size();
      results.push_back(std::move(res));
    }
    if (opts_.sync_files)
      if (auto err = detail::fsync_fd(fd.get()))
        return os_error("fsync", path, err);
    if (fd.close() != 0)
      return os_error("close", path, errno);
    return results;
  }

  caf::error
  finish(const metadata& md,
         const std::vector<std::vector<write_result>>& results) override {
    auto record = commit_record(md, results);
    if (!record)
      return std::move(record.error());
    std::string tag;
    for (const auto& [index, info] : record->storage_data) {
      auto t = tag_of(info.relative_path);
      if (!t)
        return make_error(errc::storage_failure,
                          "finish: " + to_string(index) + " is stored in '"
                            + info.relative_path
                            + "', not a staging file of this writer");
      tag = std::max(tag, *t);
      if (!exists(join(dir_, info.relative_path)))
        return make_error(errc::storage_failure,
                          "finish: the data of " + to_string(index)
                            + " is gone (" + info.relative_path + ")");
    }
    try {
      if (auto err = consolidate(*record))
        return err;
    } catch (const std::exception& ex) {
      return make_error(errc::storage_failure,
                        std::string{"finish: "} + ex.what());
    }
    collect_garbage(tag);
    std::lock_guard<std::mutex> guard{mx_};
    written_.clear();
    return caf::none;
  }

  void abort() override {
    std::lock_guard<std::mutex> guard{mx_};
    for (const auto& path : written_)
      ::unlink(path.c_str());
    written_.clear();
  }

private:
  /// The save tag of a staging file name, if it is one.
  static std::optional<std::string> tag_of(const std::string& name) {
    auto prefix = std::string{part_prefix};
    if (name.rfind(prefix, 0) != 0 || !ends_with(name, part_suffix)
        || !plain_name(name) || name.size() < prefix.size() + 24)
      return std::nullopt;
    return name.substr(prefix.size(), 24);
  }

  /// Removes staging files of saves that started no later than `tag`.
  void collect_garbage(const std::string& tag) {
    if (auto d = ::opendir(dir_.c_str())) {
      std::vector<std::string> doomed;
      while (auto entry = ::readdir(d)) {
        auto t = tag_of(entry->d_name);
        if (t && *t <= tag)
          doomed.push_back(entry->d_name);
      }
      ::closedir(d);
      for (const auto& name : doomed)
        ::unlink(join(dir_, name).c_str());
    }
  }

  struct output_tensor {
    std::string fqn;
    const tensor_storage_metadata* meta;
    uint64_t nbytes;
  };

  /// Writes the full tensors of `md` into the output file(s) and commits.
  caf::error consolidate(const metadata& md) {
    std::vector<output_tensor> tensors;
    auto header_md = opts_.metadata;
    std::map<std::string, fd_guard> fds;
    auto fd_of = [&](const std::string& name) -> caf::expected<int> {
      auto i = fds.find(name);
      if (i == fds.end()) {
        auto opened = detail::open_regular_file(join(dir_, name));
        if (!opened)
          return opened.error();
        i = fds.emplace(name, std::move(*opened)).first;
      }
      return i->second.get();
    };
    auto read_item =
      [&](const metadata_index& index) -> caf::expected<std::string> {
      const auto& si = md.storage_data.at(index);
      auto fd = fd_of(si.relative_path);
      if (!fd)
        return fd.error();
      auto data = read_range(*fd, si.offset, si.length,
                             join(dir_, si.relative_path));
      if (!data)
        return data.error();
      if (!si.checksum.empty() && item_checksum(*data) != si.checksum)
        return make_error(errc::checksum_mismatch,
                          "finish: " + to_string(index) + " in "
                            + si.relative_path
                            + " changed since it was written");
      return data;
    };
    for (const auto& [fqn, item] : md.state_dict_metadata) {
      if (item.kind == item_kind::bytes) {
        auto data = read_item(metadata_index{fqn});
        if (!data)
          return data.error();
        header_md[safetensors_bytes_prefix + fqn] = base64_encode(*data);
        continue;
      }
      auto n = safetensors_nbytes(item.tensor.properties.type,
                                  item.tensor.size);
      if (!n)
        return with_context(n.error(), fqn);
      tensors.push_back({fqn, &item.tensor, *n});
    }
    // Shards, in key order.
    std::vector<std::vector<size_t>> shards(1);
    uint64_t fill = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (opts_.max_shard_bytes > 0 && !shards.back().empty()
          && fill + tensors[i].nbytes > opts_.max_shard_bytes) {
        shards.emplace_back();
        fill = 0;
      }
      shards.back().push_back(i);
      fill += tensors[i].nbytes;
    }
    auto stem = opts_.file_name;
    if (ends_with(stem, ".safetensors"))
      stem.resize(stem.size() - std::string{".safetensors"}.size());
    std::vector<std::string> names;
    for (size_t s = 0; s < shards.size(); ++s) {
      if (shards.size() == 1) {
        names.push_back(opts_.file_name);
        break;
      }
      char buf[64];
      std::snprintf(buf, sizeof(buf), "-%05zu-of-%05zu.safetensors", s + 1,
                    shards.size());
      names.push_back(stem + buf);
    }
    // Write every file under a temporary name.
    std::vector<std::string> temps;
    auto drop_temps = [&] {
      for (const auto& t : temps)
        ::unlink(t.c_str());
    };
    for (size_t s = 0; s < shards.size(); ++s) {
      std::vector<safetensors_entry> entries;
      for (auto i : shards[s]) {
        safetensors_entry e;
        e.name = tensors[i].fqn;
        e.type = tensors[i].meta->properties.type;
        e.shape = tensors[i].meta->size;
        entries.push_back(std::move(e));
      }
      // Never replaces a link, device or FIFO someone put at the name.
      if (auto err = detail::check_output_path(join(dir_, names[s]))) {
        drop_temps();
        return err;
      }
      auto tmp = join(dir_, names[s] + ".tmp");
      fd_guard fd{detail::create_exclusive(tmp, O_WRONLY | O_CLOEXEC, 0644)};
      if (fd.get() < 0) {
        drop_temps();
        return os_error("create", tmp, errno);
      }
      temps.push_back(tmp);
      auto header = encode_safetensors_header(entries, header_md);
      if (auto err = write_all(fd.get(), header.data(), header.size(), tmp)) {
        drop_temps();
        return err;
      }
      for (auto i : shards[s]) {
        auto full = assemble(md, tensors[i], read_item);
        if (!full) {
          drop_temps();
          return full.error();
        }
        if (auto err = write_all(fd.get(), full->data(), full->size(), tmp)) {
          drop_temps();
          return err;
        }
      }
      if (opts_.sync_files)
        if (auto err = detail::fsync_fd(fd.get())) {
          drop_temps();
          return os_error("fsync", tmp, err);
        }
      if (fd.close() != 0) {
        drop_temps();
        return os_error("close", tmp, errno);
      }
    }
    // The commit: rename into place; with shards the index goes last.
    auto index = join(dir_, opts_.file_name + index_suffix);
    // The index is written (and checked) only with shards.
    for (size_t s = 0; s < names.size() + (names.size() > 1 ? 1 : 0); ++s) {
      auto target = s < names.size() ? join(dir_, names[s]) : index;
      if (auto err = detail::check_output_path(target)) {
        drop_temps();
        return err;
      }
    }
    for (size_t s = 0; s < names.size(); ++s)
      if (::rename(temps[s].c_str(), join(dir_, names[s]).c_str()) != 0) {
        drop_temps();
        return os_error("rename", temps[s], errno);
      }
    if (names.size() > 1) {
      json doc;
      uint64_t total = 0;
      for (const auto& t : tensors)
        total += t.nbytes;
      doc["metadata"] = {{"total_size", total}};
      doc["weight_map"] = json::object();
      for (size_t s = 0; s < shards.size(); ++s)
        for (auto i : shards[s])
          doc["weight_map"][tensors[i].fqn] = names[s];
      auto text = doc.dump(2) + "\n";
      auto tmp = index + ".tmp";
      fd_guard fd{detail::create_exclusive(tmp, O_WRONLY | O_CLOEXEC, 0644)};
      if (fd.get() < 0)
        return os_error("create", tmp, errno);
      if (auto err = write_all(fd.get(), text.data(), text.size(), tmp))
        return err;
      if (opts_.sync_files)
        if (auto err = detail::fsync_fd(fd.get()))
          return os_error("fsync", tmp, err);
      if (fd.close() != 0 || ::rename(tmp.c_str(), index.c_str()) != 0)
        return os_error("rename", tmp, errno);
    } else {
      // A stale index would hide the new single file from readers.
      ::unlink(index.c_str());
    }
    if (opts_.sync_files)
      return detail::fsync_dir(dir_);
    return caf::none;
  }

  /// The bytes of the full tensor `t`, from its chunks.
  template <class ReadItem>
  caf::expected<std::string>
  assemble(const metadata& md, const output_tensor& t, ReadItem& read_item) {
    const auto& chunks = t.meta->chunks;
    auto full_shape = t.meta->size;
    if (chunks.size() == 1 && chunks[0].sizes == full_shape)
      return read_item(metadata_index{t.fqn, chunks[0].offsets});
    std::string out(t.nbytes, '\0');
    auto opts = at::TensorOptions{}.dtype(
      to_scalar_type(t.meta->properties.type));
    try {
      auto full = at::from_blob(out.data(), full_shape, opts);
      for (const auto& c : chunks) {
        auto data = read_item(metadata_index{t.fqn, c.offsets});
        if (!data)
          return data.error();
        auto expected = safetensors_nbytes(t.meta->properties.type, c.sizes);
        if (!expected || *expected != data->size())
          return make_error(errc::corrupt_item,
                            "finish: chunk " + to_string(c.offsets) + " of "
                              + t.fqn + " has the wrong size");
        auto src = at::from_blob(data->data(), c.sizes, opts);
        auto dst = full;
        for (size_t d = 0; d < c.sizes.size(); ++d)
          dst = dst.narrow(static_cast<int64_t>(d), c.offsets[d], c.sizes[d]);
        dst.copy_(src);
      }
    } catch (const c10::Error& ex) {
      return make_error(errc::storage_failure, "finish: " + t.fqn + ": "
                                                 + ex.what_without_backtrace());
    }
    (void)md;
    return out;
  }

  std::string dir_;
  safetensors_writer_options opts_;
  int32_t rank_ = 0;
  std::atomic<uint64_t> serial_{0};
  std::mutex mx_;
  std::vector<std::string> written_;
};

} // namespace

storage_writer_ptr make_safetensors_writer(std::string dir,
                                           safetensors_writer_options opts) {
  return std::make_shared<safetensors_writer>(std::move(dir), std::move(opts));
}

storage_reader_ptr make_safetensors_reader(std::string path) {
  return std::make_shared<safetensors_reader>(std::move(path));
}

caf::expected<safetensors_info> read_safetensors_info(const std::string& path) {
  return read_info(path, nullptr, nullptr);
}

} // namespace dcpp
