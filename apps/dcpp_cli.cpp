// The `dcpp` command-line tool: inspect, export, import and verify DCP
// checkpoint directories (the on-disk format of PyTorch DCP's file system
// storage, docs/dcp-format.md), and find or prune the step directories of a
// checkpoint root (storage/checkpoint_root.hpp).
//
// Every failure ends as one line `dcpp: <what>: <error>` on stderr with exit
// code 1 (2 for usage errors); nothing escapes main as an exception.
// `export` and `import` of torch.save files are `export_torch_save` and
// `import_torch_save` (actors/format_utils.hpp).

#include "actors/checkpointer.hpp"
#include "actors/format_utils.hpp"
#include "apps/cli_common.hpp"
#include "core/error.hpp"
#include "core/metadata.hpp"
#include "core/planner.hpp"
#include "storage/checkpoint_root.hpp"
#include "storage/filesystem.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/posix_file.hpp"
#include "storage/safetensors.hpp"
#include "storage/safetensors_header.hpp"
#include "storage/state_dict.hpp"
#include "storage/tensor_codec.hpp"

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace dcpp {
namespace {

// -- helpers ------------------------------------------------------------------

/// Prints `dcpp: <what>: <error>` and returns exit code 1.
int fail(const std::string& what, const caf::error& err) {
  std::cerr << "dcpp: " << what << ": " << describe(err) << std::endl;
  return 1;
}

using detail::os_error;

/// Reads a file of a checkpoint directory: never through a symbolic link,
/// never blocking on a FIFO (detail::open_regular_file).
caf::expected<std::string> read_checkpoint_file(const std::string& path,
                                                uint64_t limit) {
  auto fd = detail::open_regular_file(path);
  if (!fd)
    return std::move(fd.error());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0)
    return os_error("stat", path, errno);
  auto size = static_cast<uint64_t>(st.st_size);
  if (size > limit)
    return make_error(errc::too_large,
                      path + " holds " + std::to_string(size) + " bytes");
  std::string buf(size, '\0');
  uint64_t done = 0;
  auto err = detail::pread_fully(fd->get(), buf.data(), buf.size(), 0, done);
  if (err > 0)
    return os_error("read", path, err);
  if (err < 0)
    return make_error(errc::io_error, "short read of " + path);
  return buf;
}

/// A checkpoint's decoded `.metadata` plus the raw bytes (for the flavor).
struct checkpoint_info {
  metadata md;
  std::string raw;
};

caf::expected<checkpoint_info> load_metadata(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    if (fs::exists(dir, ec))
      return make_error(errc::invalid_argument,
                        dir + " is a file, not a checkpoint directory");
    return make_error(errc::not_found, "no such directory: " + dir);
  }
  auto path = (fs::path{dir} / ".metadata").string();
  if (!fs::exists(path, ec))
    return make_error(errc::not_found, "no .metadata in " + dir);
  auto raw = read_checkpoint_file(path, uint64_t{1} << 30);
  if (!raw)
    return raw.error();
  auto md = decode_metadata(*raw);
  if (!md)
    return with_context(md.error(), path, errc::corrupt_metadata);
  return checkpoint_info{std::move(*md), std::move(*raw)};
}

/// Which torch the `.metadata` was written for, from its class paths.
std::string flavor_guess(const checkpoint_info& ci) {
  if (ci.raw.find("torch.distributed._shard.checkpoint") != std::string::npos)
    return "1.13";
  if (ci.raw.find("torch.distributed.checkpoint") != std::string::npos)
    return "2";
  return "unknown";
}

bool is_plain_name(const std::string& p) {
  return !p.empty() && p != "." && p != ".." && p.find('/') == std::string::npos
         && p.find('\0') == std::string::npos;
}

std::string join_shape(const shape_t& xs) {
  return to_string(xs);
}

/// The storage entry of one chunk (tensor) or item (bytes), or nullptr.
const storage_info* find_storage(const metadata& md, const std::string& fqn,
                                 const chunk_storage_metadata* chunk) {
  auto idx = chunk ? metadata_index{fqn, chunk->offsets} : metadata_index{fqn};
  auto i = md.storage_data.find(idx);
  return i == md.storage_data.end() ? nullptr : &i->second;
}

// -- inspect ------------------------------------------------------------------

/// Appends `key: value` to the JSON object `obj` without the search for an
/// existing key that `obj[key]` makes (an ordered_json object is a vector,
/// so N insertions that way cost N^2): `key` must be new, as every key of
/// a std::map the caller walks is.
void append_new_key(nlohmann::ordered_json& obj, const std::string& key,
                    nlohmann::ordered_json value) {
  using container = nlohmann::ordered_json::object_t::Container;
  auto& entries = obj.get_ref<nlohmann::ordered_json::object_t&>();
  static_cast<container&>(entries).emplace_back(key, std::move(value));
}

struct row {
  std::vector<std::string> cells;
};

void print_table(const std::vector<std::string>& header,
                 const std::vector<row>& rows) {
  std::vector<size_t> widths(header.size());
  for (size_t i = 0; i < header.size(); ++i)
    widths[i] = header[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.cells.size(); ++i)
      widths[i] = std::max(widths[i], r.cells[i].size());
  auto print_row = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (size_t i = 0; i < cells.size(); ++i) {
      line += cells[i];
      if (i + 1 < cells.size())
        line += std::string(widths[i] - cells[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    std::cout << line << '\n';
  };
  print_row(header);
  for (const auto& r : rows)
    print_row(r.cells);
}

int run_inspect(const std::string& dir, bool as_json) {
  auto ci = load_metadata(dir);
  if (!ci)
    return fail("inspect " + dir, ci.error());
  const auto& md = ci->md;
  nlohmann::ordered_json items = nlohmann::ordered_json::object();
  std::vector<row> rows;
  std::map<std::string, uint64_t> files; // file -> bytes referenced
  size_t n_tensors = 0;
  size_t n_bytes = 0;
  size_t n_checksums = 0;
  size_t n_entries = 0;
  auto add_storage = [&](nlohmann::ordered_json& j, row& r,
                         const storage_info* si) {
    if (!si) {
      j["file"] = nullptr;
      r.cells.insert(r.cells.end(), {"(missing)", "-", "-", "-"});
      return;
    }
    ++n_entries;
    files[si->relative_path] += si->length;
    j["file"] = si->relative_path;
    j["offset"] = si->offset;
    j["length"] = si->length;
    j["checksum"] = si->checksum.empty() ? nlohmann::ordered_json(nullptr)
                                         : nlohmann::ordered_json(si->checksum);
    if (!si->checksum.empty())
      ++n_checksums;
    r.cells.insert(r.cells.end(),
                   {si->relative_path, std::to_string(si->offset),
                    std::to_string(si->length),
                    si->checksum.empty() ? "-" : si->checksum});
  };
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    nlohmann::ordered_json j;
    if (item.kind == item_kind::bytes) {
      ++n_bytes;
      j["kind"] = "bytes";
      row r{{fqn, "bytes", "-", "-", "-", "-", "-"}};
      nlohmann::ordered_json s;
      add_storage(s, r, find_storage(md, fqn, nullptr));
      j["storage"] = s;
      rows.push_back(std::move(r));
      append_new_key(items, fqn, std::move(j));
      continue;
    }
    ++n_tensors;
    const auto& t = item.tensor;
    j["kind"] = "tensor";
    j["dtype"] = to_string(t.properties.type);
    j["shape"] = t.size;
    j["bytes"] = numel(t.size) * element_size(t.properties.type);
    auto chunks = nlohmann::ordered_json::array();
    auto n = t.chunks.size();
    for (size_t k = 0; k < n; ++k) {
      const auto& c = t.chunks[k];
      nlohmann::ordered_json cj;
      cj["offsets"] = c.offsets;
      cj["sizes"] = c.sizes;
      row r{{k == 0 ? fqn : "", k == 0 ? "tensor" : "",
             k == 0 ? to_string(t.properties.type) : "",
             k == 0 ? join_shape(t.size) : "",
             std::to_string(k + 1) + "/" + std::to_string(n),
             join_shape(c.offsets), join_shape(c.sizes)}};
      add_storage(cj, r, find_storage(md, fqn, &c));
      chunks.push_back(std::move(cj));
      rows.push_back(std::move(r));
    }
    j["chunks"] = std::move(chunks);
    append_new_key(items, fqn, std::move(j));
  }
  uint64_t file_bytes = 0;
  for (const auto& [name, len] : files)
    file_bytes += len;
  auto version = md.version.empty() ? std::string{"(none)"} : md.version;
  if (as_json) {
    nlohmann::ordered_json out;
    out["directory"] = dir;
    out["items"] = std::move(items);
    nlohmann::ordered_json s;
    s["keys"] = md.state_dict_metadata.size();
    s["tensors"] = n_tensors;
    s["bytes_items"] = n_bytes;
    s["tensor_bytes"] = tensor_bytes(md);
    s["storage_entries"] = n_entries;
    s["entries_with_checksum"] = n_checksums;
    s["files"] = files;
    s["item_bytes"] = file_bytes;
    s["version"] = md.version.empty() ? nlohmann::ordered_json(nullptr)
                                      : nlohmann::ordered_json(md.version);
    s["flavor"] = flavor_guess(*ci);
    out["summary"] = std::move(s);
    std::cout << out.dump(2) << std::endl;
    return 0;
  }
  print_table({"KEY", "KIND", "DTYPE", "SHAPE", "CHUNK", "OFFSETS", "SIZES",
               "FILE", "OFFSET", "LENGTH", "CHECKSUM"},
              rows);
  std::cout << "\nkeys: " << md.state_dict_metadata.size() << " (" << n_tensors
            << " tensors, " << n_bytes << " bytes items)\n"
            << "tensor bytes: " << tensor_bytes(md) << "\n"
            << "files: " << files.size() << " (" << file_bytes
            << " bytes of items, " << n_entries << " entries, " << n_checksums
            << " with checksum)\n"
            << "format: version " << version << ", flavor " << flavor_guess(*ci)
            << std::endl;
  return 0;
}

// -- export -------------------------------------------------------------------

/// Every value of the checkpoint in `dir` (whose metadata is `md`), read on
/// one rank: what both exports write out.
caf::expected<state_dict> read_whole_checkpoint(const std::string& dir,
                                                const metadata& md) {
  auto sd = make_state_dict_for(md);
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{nullptr, make_filesystem_reader(dir), opts};
  if (auto err = cp.load(sd))
    return err;
  return sd;
}

int run_export(const std::string& dir, const std::string& out, bool flat) {
  // Checked before anything is read; the writer checks the kind of file
  // at `out` again just before it replaces it.
  if (auto err = detail::check_output_path(out, {dir}))
    return fail("export " + dir, err);
  torch_save_export_options opts;
  opts.flat = flat;
  auto md = export_torch_save(make_filesystem_reader(dir), out, opts);
  if (!md)
    return fail("export " + dir, md.error());
  // Nested when some key's path has more than one step (a flat state dict
  // records each key as its own one-step path, or nothing).
  bool nested = false;
  for (const auto& [key, path] : md->planner_data)
    nested = nested || path.size() > 1;
  std::cout << "exported " << md->state_dict_metadata.size() << " keys ("
            << tensor_bytes(*md) << " tensor bytes"
            << (flat || !nested ? ", flat" : ", nested") << ") to " << out
            << std::endl;
  return 0;
}

// -- import -------------------------------------------------------------------

/// The writer options of an import of `in` into `dir`: -1, or the exit code
/// of a refusal (an unknown flavor; a checkpoint already in `dir` without
/// --force).
int import_target(const std::string& in, const std::string& dir,
                  const std::string& flavor_str, bool force,
                  filesystem_writer_options& wopts) {
  auto flavor = parse_metadata_flavor(flavor_str);
  if (!flavor)
    return fail("import " + in, flavor.error());
  std::error_code ec;
  if (!force && fs::exists(fs::path{dir} / ".metadata", ec))
    return fail("import " + dir,
                make_error(errc::invalid_argument,
                           "already holds a checkpoint (use --force)"));
  wopts.flavor = *flavor;
  return -1;
}

/// The line an import prints when it committed.
int imported(const metadata& md, const std::string& dir) {
  std::cout << "imported " << md.state_dict_metadata.size() << " keys ("
            << tensor_bytes(md) << " tensor bytes) into " << dir << std::endl;
  return 0;
}

int run_import(const std::string& in, const std::string& dir,
               const std::string& flavor_str, bool force) {
  filesystem_writer_options wopts;
  if (int rc = import_target(in, dir, flavor_str, force, wopts); rc >= 0)
    return rc;
  // Read through dcpp's restricted unpickler: nothing in the file runs, and
  // nothing is written unless all of it reads.
  auto md = import_torch_save(in, make_filesystem_writer(dir, wopts));
  // Errors reading the file name it, errors writing name the directory.
  if (!md)
    return fail("import", md.error());
  return imported(*md, dir);
}

// -- verify -------------------------------------------------------------------

struct verify_stats {
  size_t items = 0;
  size_t broken = 0;
  size_t checksummed = 0;
  size_t without_checksum = 0;
};

/// Checks one stored item; returns the error that breaks it, if any.
caf::error check_item(const std::string& dir, const storage_info& si,
                      const item_metadata& item,
                      const chunk_storage_metadata* chunk,
                      verify_stats& stats) {
  if (!is_plain_name(si.relative_path))
    return make_error(errc::path_escape,
                      "'" + si.relative_path + "' leaves " + dir);
  auto path = (fs::path{dir} / si.relative_path).string();
  auto opened = detail::open_regular_file(path);
  if (!opened)
    return std::move(opened.error());
  auto& f = *opened;
  struct stat st {};
  if (::fstat(f.get(), &st) != 0)
    return os_error("stat", path, errno);
  auto end = si.offset + si.length;
  if (end < si.offset || static_cast<uint64_t>(st.st_size) < end)
    return make_error(errc::corrupt_item,
                      "file holds " + std::to_string(st.st_size)
                        + " bytes, item ends at " + std::to_string(end));
  if (si.checksum.empty())
    ++stats.without_checksum;
  else
    ++stats.checksummed;
  item_location loc{f.get(), path, si.offset, si.length};
  if (!chunk) {
    auto bytes = read_item_bytes(loc, si.checksum);
    return bytes ? caf::error{} : bytes.error();
  }
  auto rd = tensor_item_reader::open(loc);
  if (!rd)
    return rd.error();
  if (auto err = rd->expect(item.tensor.properties.type, chunk->sizes))
    return err;
  auto t = rd->read_tensor(si.checksum);
  return t ? caf::error{} : t.error();
}

int run_verify(const std::string& dir, bool as_json) {
  auto ci = load_metadata(dir);
  if (!ci) {
    if (as_json)
      std::cout << nlohmann::json{{"dir", dir},
                                  {"ok", false},
                                  {"error", describe(ci.error())}}
                     .dump()
                << std::endl;
    return fail("verify " + dir, ci.error());
  }
  const auto& md = ci->md;
  verify_stats stats;
  auto problems = nlohmann::json::array();
  auto report = [&](const std::string& key, const std::string& chunk,
                    const std::string& file, const caf::error& err) {
    ++stats.broken;
    if (as_json)
      problems.push_back({{"key", key},
                          {"chunk", chunk},
                          {"file", file},
                          {"error", describe(err)}});
    else
      std::cout << "BROKEN " << key << " chunk " << chunk << " file " << file
                << ": " << describe(err) << std::endl;
  };
  bool coverage_ok = true;
  if (auto err = validate_metadata(md)) {
    coverage_ok = false;
    report("metadata", "-", ".metadata", err);
  }
  for (const auto& entry : md.state_dict_metadata) {
    const auto& fqn = entry.first;
    const auto& item = entry.second;
    auto check = [&](const chunk_storage_metadata* c) {
      ++stats.items;
      auto chunk = c ? to_string(c->offsets) : std::string{"-"};
      auto si = find_storage(md, fqn, c);
      if (!si) {
        report(fqn, chunk, "-",
               make_error(errc::corrupt_metadata, "no storage entry"));
        return;
      }
      if (auto err = check_item(dir, *si, item, c, stats))
        report(fqn, chunk, si->relative_path, err);
    };
    if (item.kind == item_kind::bytes) {
      check(nullptr);
      continue;
    }
    for (const auto& c : item.tensor.chunks)
      check(&c);
  }
  if (as_json) {
    std::cout << nlohmann::json{{"dir", dir},
                                {"ok", stats.broken == 0},
                                {"items", stats.items},
                                {"broken", stats.broken},
                                {"checksums_checked", stats.checksummed},
                                {"without_checksum", stats.without_checksum},
                                {"coverage_ok", coverage_ok},
                                {"problems", std::move(problems)}}
                   .dump()
              << std::endl;
    return stats.broken == 0 ? 0 : 1;
  }
  std::cout << "verify " << dir << ": " << stats.items << " items, "
            << stats.broken << " broken; " << stats.checksummed
            << " checksums checked, " << stats.without_checksum
            << " items without checksum; chunk coverage "
            << (coverage_ok ? "ok" : "BROKEN") << std::endl;
  return stats.broken == 0 ? 0 : 1;
}

// -- main ---------------------------------------------------------------------

std::string first_line(std::string msg) {
  auto pos = msg.find('\n');
  if (pos != std::string::npos)
    msg.erase(pos);
  return msg;
}

/// Names on stderr a step whose `.metadata` is there but does not validate:
/// `latest` and `prune` pass over it and never remove it.
void warn_broken(const char* cmd, const step_entry& entry) {
  std::cerr << "dcpp: " << cmd << ": passed over " << entry.path
            << " (not loadable, left in place): " << first_line(entry.broken)
            << std::endl;
}

int run_latest(const std::string& root, bool step_only) {
  std::vector<step_entry> broken;
  auto latest = latest_committed(root, &broken);
  for (const auto& entry : broken)
    warn_broken("latest", entry);
  if (!latest)
    return fail("latest", latest.error());
  if (step_only)
    std::cout << latest->step << std::endl;
  else
    std::cout << latest->path << std::endl;
  return 0;
}

int run_prune(const std::string& root, size_t keep) {
  std::vector<step_entry> broken;
  auto removed = prune(root, keep, &broken);
  for (const auto& entry : broken)
    warn_broken("prune", entry);
  if (!removed)
    return fail("prune", removed.error());
  for (const auto& path : *removed)
    std::cout << "removed " << path << "\n";
  std::cout << std::flush;
  return 0;
}

// -- safetensors --------------------------------------------------------------
//
// `__metadata__` of a safetensors file survives `import` + `export` in the
// file `safetensors_metadata.json` of the checkpoint directory (a JSON
// object of strings): the header's string metadata describes the file, not
// the state, so it is no key of the state dict (which `dcpp export` to .pt
// and PyTorch's `dcp_to_torch_save` would turn into one). DCP and `dcpp
// verify` pass over the file. Checkpoints imported before kept it as the
// str value `__metadata__`; export to safetensors still reads that.

constexpr const char* safetensors_metadata_key = "__metadata__";
constexpr const char* safetensors_metadata_file = "safetensors_metadata.json";

std::string safetensors_metadata_path(const std::string& dir) {
  return (fs::path{dir} / safetensors_metadata_file).string();
}

/// The string metadata an import kept in `dir`, if any.
caf::expected<std::map<std::string, std::string>>
read_safetensors_metadata(const std::string& dir) {
  std::map<std::string, std::string> result;
  auto path = safetensors_metadata_path(dir);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec)))
    return result;
  auto text = read_checkpoint_file(path, safetensors_max_header);
  if (!text)
    return text.error();
  auto doc = nlohmann::json::parse(*text, nullptr, false);
  if (!doc.is_object())
    return make_error(errc::corrupt_metadata, path + ": not a JSON object");
  for (auto& [k, x] : doc.items()) {
    if (!x.is_string())
      return make_error(errc::corrupt_metadata,
                        path + ": value of '" + k + "' is not a string");
    result[k] = x.get<std::string>();
  }
  return result;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size()
         && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int run_inspect_safetensors(const std::string& path, bool as_json) {
  auto info = read_safetensors_info(path);
  if (!info)
    return fail("inspect " + path, info.error());
  const auto& md = info->md;
  nlohmann::ordered_json j;
  j["format"] = "safetensors";
  j["files"] = info->files;
  j["metadata"] = info->user_metadata;
  nlohmann::ordered_json tensors = nlohmann::ordered_json::object();
  std::vector<row> rows;
  std::vector<std::string> bytes_keys;
  uint64_t total = 0;
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (item.kind == item_kind::bytes) {
      bytes_keys.push_back(fqn);
      continue;
    }
    const auto& si = md.storage_data.at(
      metadata_index{fqn, shape_t(item.tensor.size.size(), 0)});
    total += si.length;
    auto dt = info->dtype_names.at(fqn);
    append_new_key(tensors, fqn,
                   {{"dtype", dt},
                    {"shape", item.tensor.size},
                    {"file", si.relative_path},
                    {"offset", si.offset},
                    {"length", si.length}});
    rows.push_back({{fqn, dt, join_shape(item.tensor.size), si.relative_path,
                     std::to_string(si.offset), std::to_string(si.length)}});
  }
  j["tensors"] = tensors;
  j["bytes"] = bytes_keys;
  j["tensor_bytes"] = total;
  if (as_json) {
    std::cout << j.dump(2) << std::endl;
    return 0;
  }
  print_table({"key", "dtype", "shape", "file", "offset", "length"}, rows);
  for (const auto& key : bytes_keys)
    std::cout << "bytes value: " << key << std::endl;
  for (const auto& [k, v] : info->user_metadata)
    std::cout << "__metadata__: " << k << " = " << v << std::endl;
  std::cout << rows.size() << " tensors (" << total << " bytes), "
            << bytes_keys.size() << " bytes values in " << info->files.size()
            << " safetensors file(s)" << std::endl;
  return 0;
}

/// A DCP checkpoint directory -> one safetensors file of full tensors.
int run_export_safetensors(const std::string& dir, const std::string& out) {
  auto what = "export " + dir;
  if (auto err = detail::check_output_path(out, {dir}))
    return fail(what, err);
  auto ci = load_metadata(dir);
  if (!ci)
    return fail(what, ci.error());
  auto sd = read_whole_checkpoint(dir, ci->md);
  if (!sd)
    return fail(what, sd.error());
  checkpointer_options opts;
  opts.no_dist = true;
  safetensors_writer_options wopts;
  auto parent = fs::path{out}.parent_path().string();
  wopts.file_name = fs::path{out}.filename().string();
  auto kept = read_safetensors_metadata(dir);
  if (!kept)
    return fail(what, kept.error());
  for (auto& [k, v] : *kept)
    wopts.metadata[k] = std::move(v);
  // The str value `__metadata__` (from an older import) becomes the
  // header's.
  state_dict rest;
  for (auto& [key, v] : sd->entries()) {
    auto* b = std::get_if<bytes_value>(&v);
    if (key == safetensors_metadata_key && b) {
      auto text = b->to_string();
      auto doc = text ? nlohmann::json::parse(*text, nullptr, false)
                      : nlohmann::json{};
      if (doc.is_object()) {
        for (auto& [k, x] : doc.items())
          if (x.is_string())
            wopts.metadata[k] = x.get<std::string>();
        continue;
      }
    }
    if (auto saved = sd->carried_dtype(key))
      rest.set_carried(key, std::move(v), *saved);
    else
      rest.set(key, std::move(v));
  }
  checkpointer cp{make_safetensors_writer(parent.empty() ? "." : parent, wopts),
                  nullptr, opts};
  auto md = cp.save(rest);
  if (!md)
    return fail("export " + out, md.error());
  std::cout << "exported " << md->state_dict_metadata.size() << " keys ("
            << tensor_bytes(*md) << " tensor bytes) to " << out << std::endl;
  return 0;
}

/// A safetensors file (or index, or directory) -> a DCP checkpoint.
int run_import_safetensors(const std::string& in, const std::string& dir,
                           const std::string& flavor_str, bool force) {
  auto what = "import " + in;
  filesystem_writer_options wopts;
  if (int rc = import_target(in, dir, flavor_str, force, wopts); rc >= 0)
    return rc;
  auto info = read_safetensors_info(in);
  if (!info)
    return fail(what, info.error());
  auto sd = make_state_dict_for(info->md);
  checkpointer_options opts;
  opts.no_dist = true;
  {
    checkpointer cp{nullptr, make_safetensors_reader(in), opts};
    if (auto err = cp.load(sd))
      return fail(what, err);
  }
  // Written before the commit (`.metadata`), so a committed checkpoint
  // has it; a stale one of an earlier import goes.
  auto kept = safetensors_metadata_path(dir);
  ::unlink(kept.c_str());
  if (!info->user_metadata.empty()) {
    if (auto err = detail::make_directories(dir, true))
      return fail("import " + dir, err);
    nlohmann::json doc = info->user_metadata;
    if (auto err = detail::replace_file(kept, doc.dump()))
      return fail("import " + dir, err);
  }
  checkpointer cp{make_filesystem_writer(dir, wopts), nullptr, opts};
  auto md = cp.save(sd);
  if (!md) {
    ::unlink(kept.c_str());
    return fail("import " + dir, md.error());
  }
  return imported(*md, dir);
}

int run_main(int argc, char** argv) {
  CLI::App app{"dcpp: inspect, export, import and verify PyTorch DCP "
               "checkpoint directories; find and prune step directories"};
  app.require_subcommand(1);
  cli::log_options log;
  cli::add_common_options(app, log);
  app.footer(cli::env_footer({}));
  bool as_json = false;
  std::string dir;
  std::string file;
  std::string flavor = "2";
  bool force = false;
  auto* inspect = app.add_subcommand(
    "inspect", "List every key (kind, dtype, shape, chunks and where each "
               "chunk's bytes live) and a summary");
  inspect->add_option("DIR", dir, "checkpoint directory")->required();
  inspect->add_flag("--json", as_json, "machine-readable output");
  bool flat = false;
  auto* exp = app.add_subcommand(
    "export", "Consolidate into one torch.save file of full tensors that "
              "Python torch.load opens, nested as it was saved (dicts, "
              "lists, decoded non-tensor values; optimizer state keyed by "
              "int again), like DCP's dcp_to_torch_save; or into "
              "FILE.safetensors");
  exp->add_option("DIR", dir, "checkpoint directory")->required();
  exp->add_option("FILE", file, "output .pt (or .safetensors) file")
    ->required();
  exp->add_flag("--flat", flat,
                "one dict {flattened dotted key: value}, ignoring the "
                "nesting recorded in planner_data");
  auto* imp = app.add_subcommand(
    "import", "Write a torch.save'd state dict as a DCP checkpoint (like "
              "DCP's torch_save_to_dcp): dicts, OrderedDicts and lists "
              "holding tensors become dotted keys, other values bytes items. "
              "Read by a restricted unpickler: only torch.save's own "
              "globals are accepted, nothing in the file is executed");
  imp->add_option("FILE", file, "input .pt file")->required();
  imp->add_option("DIR", dir, "checkpoint directory to create")->required();
  imp->add_option("--flavor", flavor, ".metadata flavor: 1.13 or 2")
    ->check(CLI::IsMember({"1.13", "2"}));
  imp->add_flag("--force", force, "overwrite an existing checkpoint");
  auto* ver = app.add_subcommand(
    "verify", "Check checksums, chunk coverage, file sizes and that every "
              "tensor item decodes to its metadata's dtype and shape");
  ver->add_option("DIR", dir, "checkpoint directory")->required();
  ver->add_flag("--json", as_json,
                "one JSON object: counts, chunk coverage, every broken item");
  bool step_only = false;
  auto* latest = app.add_subcommand(
    "latest", "Print the newest committed step directory of a checkpoint "
              "root (ROOT/step_NNNNNNNNN/ holding a .metadata that validates; "
              "steps whose .metadata does not are named on stderr and "
              "passed over); exit 1 if none");
  latest->add_option("ROOT", dir, "checkpoint root")->required();
  latest->add_flag("--step", step_only, "print only the step number");
  int64_t keep = 0;
  auto* prn = app.add_subcommand(
    "prune", "Remove all but the newest KEEP committed step directories of "
             "a checkpoint root, and leftovers of aborted saves older than "
             "the newest commit (crash-safe)");
  prn->add_option("ROOT", dir, "checkpoint root")->required();
  // Signed, so that "-1" is refused instead of wrapping around to "keep
  // everything"; a bound far above any real count of checkpoints.
  prn
    ->add_option("--keep", keep,
                 "committed steps to keep (1 to 1000000); broken steps "
                 "(.metadata that does not validate) are not counted and "
                 "never removed")
    ->required()
    ->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  if (int rc = cli::parse(app, argc, argv, "dcpp"); rc >= 0)
    return rc;
  cli::init_logging(log, "dcpp");
  if (inspect->parsed() && is_safetensors_path(dir))
    return run_inspect_safetensors(dir, as_json);
  if (inspect->parsed())
    return run_inspect(dir, as_json);
  if (exp->parsed() && ends_with(file, ".safetensors"))
    return run_export_safetensors(dir, file);
  if (exp->parsed())
    return run_export(dir, file, flat);
  if (imp->parsed() && is_safetensors_path(file))
    return run_import_safetensors(file, dir, flavor, force);
  if (imp->parsed())
    return run_import(file, dir, flavor, force);
  if (latest->parsed())
    return run_latest(dir, step_only);
  if (prn->parsed())
    return run_prune(dir, static_cast<size_t>(keep));
  return run_verify(dir, as_json);
}

} // namespace
} // namespace dcpp

int main(int argc, char** argv) {
  try {
    return dcpp::run_main(argc, argv);
  } catch (const c10::Error& e) {
    std::cerr << "dcpp: torch: " << dcpp::first_line(e.what_without_backtrace())
              << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "dcpp: " << dcpp::first_line(e.what()) << std::endl;
  } catch (...) {
    std::cerr << "dcpp: unknown error" << std::endl;
  }
  return 1;
}
