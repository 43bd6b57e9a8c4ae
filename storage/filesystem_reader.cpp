// The file-system reader (storage/filesystem.hpp). Reading trusts nothing
// in `.metadata`: relative paths must be plain file names inside the
// directory, items must lie inside their files, and every item is parsed
// and bounds-checked before a byte goes to a destination. The writer and
// its durability protocol are in filesystem_writer.cpp.

#include "core/error.hpp"
#include "storage/checksum.hpp"
#include "storage/filesystem.hpp"
#include "storage/filesystem_layout.hpp"
#include "storage/item_io.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/posix_file.hpp"
#include "storage/thread_pool.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace dcpp {

namespace {

using detail::check_data_files;
using detail::fd_guard;
using detail::join;
using detail::os_error;
using detail::plain_file_name;
using detail::read_metadata_file;
using detail::run_parallel;

/// Prefix of a load plan's fingerprint (`filesystem_reader::fingerprint_of`).
constexpr const char* fingerprint_prefix = "dcpp-metadata ";

/// What identifies a checkpoint: the checksum of the `.metadata` bytes this
/// rank read (`read_metadata`), or, for metadata that did not come from
/// this reader, of the metadata encoded the one way dcpp encodes it (equal
/// metadata, equal fingerprint). Hashing the bytes read costs ~0.2 ms per MB;
/// encoding again cost ~50 ms for 2250 entries on a rank's critical path.
std::string fingerprint_of(const std::string& checksum) {
  return fingerprint_prefix + std::string{".metadata is "} + checksum;
}

std::string fingerprint_of(const metadata& md) {
  return fingerprint_of(
    item_checksum(encode_metadata(md, metadata_flavor::torch_2)));
}

class filesystem_reader final : public storage_reader {
public:
  filesystem_reader(std::string dir, filesystem_reader_options opts)
    : dir_(std::move(dir)), opts_(opts) {
    if (opts_.thread_count == 0)
      opts_.thread_count = 1;
  }

  caf::error reset(const std::string& checkpoint_id) override {
    if (checkpoint_id.empty())
      return make_error(errc::invalid_argument,
                        "reset: an empty checkpoint directory");
    std::lock_guard<std::mutex> guard{mx_};
    dir_ = checkpoint_id;
    read_checksum_.clear();
    return {};
  }

  caf::expected<metadata> read_metadata() override {
    std::string bytes;
    auto md = read_metadata_file(dir_, &bytes);
    auto checksum = md ? item_checksum(bytes) : std::string{};
    std::lock_guard<std::mutex> guard{mx_};
    read_checksum_ = std::move(checksum);
    return md;
  }

  caf::error set_up(const metadata& md, bool, int32_t) override {
    if (auto err = check_data_files(dir_, md))
      return err;
    auto shared = std::make_shared<const metadata>(md);
    std::lock_guard<std::mutex> guard{mx_};
    md_ = std::move(shared);
    // The metadata of a load is what this reader's `read_metadata` read.
    fingerprint_ = read_checksum_.empty() ? fingerprint_of(md)
                                          : fingerprint_of(read_checksum_);
    return {};
  }

  /// Names the checkpoint this rank read (see `fingerprint_of`), for the
  /// coordinator's check.
  caf::expected<load_plan> prepare_local_plan(load_plan plan) override {
    std::lock_guard<std::mutex> guard{mx_};
    plan.storage_data = fingerprint_;
    return plan;
  }

  /// The coordinator: every rank of a load must have read the same
  /// checkpoint (ranks given different directories, or a `.metadata`
  /// replaced between their reads, would otherwise load mixed data). Fails
  /// naming the ranks of each checkpoint read.
  caf::expected<std::vector<load_plan>>
  prepare_global_plan(std::vector<load_plan> plans) override {
    std::map<std::string, std::string> ranks_of;
    for (size_t r = 0; r < plans.size(); ++r) {
      auto& fp = plans[r].storage_data;
      if (fp.rfind(fingerprint_prefix, 0) != 0)
        continue; // not prepared by a file-system reader
      auto& ranks = ranks_of[fp];
      ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
      fp.clear();
    }
    if (ranks_of.size() <= 1)
      return plans;
    std::string what;
    for (const auto& [fp, ranks] : ranks_of)
      what += (what.empty() ? "" : "; ") + std::string{"rank(s) "} + ranks
              + " read the checkpoint whose "
              + fp.substr(std::string_view{fingerprint_prefix}.size());
    return make_error(errc::invalid_argument,
                      "prepare_global_plan: the ranks of this load read "
                      "different checkpoints: "
                        + what
                        + "; every rank of a load must read the same "
                          "checkpoint");
  }

  caf::error read_data(const load_plan& plan, load_target& target) override {
    std::shared_ptr<const metadata> md;
    {
      std::lock_guard<std::mutex> guard{mx_};
      md = md_;
    }
    if (!md)
      return make_error(errc::invalid_argument, "read_data before set_up");
    try {
      auto units = group(plan, *md);
      if (!units)
        return units.error();
      // Open every file once.
      std::unordered_map<std::string, int> fds;
      std::vector<std::unique_ptr<fd_guard>> guards;
      for (auto& u : *units) {
        auto i = fds.find(u.info->relative_path);
        if (i == fds.end()) {
          if (!plain_file_name(u.info->relative_path))
            return make_error(errc::path_escape,
                              to_string(u.index) + ": relative path '"
                                + u.info->relative_path
                                + "' is not a file inside " + dir_);
          auto path = join(dir_, u.info->relative_path);
          // Checked again here: the file may have been replaced since.
          auto opened = detail::open_regular_file(path);
          if (!opened)
            return with_context(opened.error(), to_string(u.index));
          int fd = opened->get();
          guards.push_back(std::make_unique<fd_guard>(std::move(*opened)));
          // Items are read in file order: let readahead run far.
          (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
          i = fds.emplace(u.info->relative_path, fd).first;
        }
        u.fd = i->second;
      }
      // File order: the disk streams, and each worker asks the kernel to
      // fetch the next item while it decodes the current one.
      std::stable_sort(
        units->begin(), units->end(), [](const unit& a, const unit& b) {
          return std::tie(a.info->relative_path, a.info->offset)
                 < std::tie(b.info->relative_path, b.info->offset);
        });
      auto prefetch = [&](size_t i) {
        const auto& u = (*units)[i];
        (void)::posix_fadvise(u.fd, static_cast<off_t>(u.info->offset),
                              static_cast<off_t>(u.info->length),
                              POSIX_FADV_WILLNEED);
      };
      return run_parallel(units->size(), opts_.thread_count, [&](size_t i) {
        if (i == 0)
          prefetch(0);
        if (i + 1 < units->size())
          prefetch(i + 1);
        return read_unit((*units)[i], *md, target);
      });
    } catch (const std::exception& ex) {
      return make_error(errc::invalid_argument,
                        std::string{"read_data: unexpected exception: "}
                          + ex.what());
    }
  }

  std::vector<load_plan> split_plan(const load_plan& plan, size_t n) override {
    n = std::max<size_t>(n, 1);
    std::shared_ptr<const metadata> md;
    {
      std::lock_guard<std::mutex> guard{mx_};
      md = md_;
    }
    // Groups of read items that hit the same saved item, in order of
    // first appearance.
    std::map<metadata_index, size_t> group_of;
    std::vector<std::vector<size_t>> groups;
    std::vector<uint64_t> weight;
    for (size_t i = 0; i < plan.items.size(); ++i) {
      const auto& idx = plan.items[i].storage_index;
      auto it = group_of.find(idx);
      if (it == group_of.end()) {
        it = group_of.emplace(idx, groups.size()).first;
        groups.emplace_back();
        uint64_t w = 1;
        if (md) {
          auto info = md->storage_data.find(idx);
          if (info != md->storage_data.end())
            w = std::max<uint64_t>(info->second.length, 1);
        }
        weight.push_back(w);
      }
      groups[it->second].push_back(i);
    }
    // Largest first onto the lightest part.
    std::vector<size_t> order(groups.size());
    for (size_t i = 0; i < order.size(); ++i)
      order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return weight[a] > weight[b]; });
    std::vector<uint64_t> load(n, 0);
    std::vector<std::vector<size_t>> members(n);
    for (auto g : order) {
      auto p = static_cast<size_t>(std::min_element(load.begin(), load.end())
                                   - load.begin());
      load[p] += weight[g];
      for (auto i : groups[g])
        members[p].push_back(i);
    }
    std::vector<load_plan> parts;
    for (auto& m : members) {
      if (m.empty())
        continue;
      std::sort(m.begin(), m.end());
      load_plan part;
      part.storage_data = plan.storage_data;
      part.planner_data = plan.planner_data;
      for (auto i : m)
        part.items.push_back(plan.items[i]);
      parts.push_back(std::move(part));
    }
    if (parts.empty())
      parts.push_back(plan);
    return parts;
  }

private:
  /// All read items that hit one saved item.
  struct unit {
    metadata_index index;
    const storage_info* info = nullptr;
    const item_metadata* item = nullptr;
    std::vector<const read_item*> reads;
    int fd = -1;
  };

  caf::expected<std::vector<unit>> group(const load_plan& plan,
                                         const metadata& md) const {
    std::vector<unit> units;
    std::map<metadata_index, size_t> pos;
    for (const auto& r : plan.items) {
      auto it = pos.find(r.storage_index);
      if (it == pos.end()) {
        unit u;
        u.index = r.storage_index;
        auto info = md.storage_data.find(r.storage_index);
        if (info == md.storage_data.end())
          return make_error(errc::missing_key,
                            to_string(r.storage_index)
                              + ": not in the checkpoint's storage data");
        u.info = &info->second;
        auto item = md.state_dict_metadata.find(r.storage_index.fqn);
        if (item == md.state_dict_metadata.end())
          return make_error(errc::missing_key,
                            r.storage_index.fqn + ": not in the checkpoint");
        u.item = &item->second;
        it = pos.emplace(r.storage_index, units.size()).first;
        units.push_back(std::move(u));
      }
      auto& u = units[it->second];
      bool wants_bytes = r.type == load_item_type::bytes;
      bool has_bytes = u.item->kind == item_kind::bytes;
      if (wants_bytes != has_bytes)
        return make_error(errc::kind_mismatch,
                          to_string(r.storage_index) + ": the checkpoint holds "
                            + to_string(u.item->kind) + ", the plan reads "
                            + (wants_bytes ? "bytes" : "a tensor"));
      u.reads.push_back(&r);
    }
    return units;
  }

  caf::error read_unit(const unit& u, const metadata& md,
                       load_target& target) const {
    auto key = to_string(u.index);
    item_location loc{u.fd, join(dir_, u.info->relative_path), u.info->offset,
                      u.info->length};
    std::string_view checksum;
    if (opts_.verify_checksums)
      checksum = u.info->checksum;
    if (u.item->kind == item_kind::bytes) {
      auto data = read_item_bytes(loc, checksum);
      if (!data)
        return with_context(data.error(), key);
      for (size_t i = 0; i < u.reads.size(); ++i) {
        auto copy = i + 1 < u.reads.size() ? *data : std::move(*data);
        if (auto err = target.set_bytes(*u.reads[i], std::move(copy)))
          return with_context(err, key);
      }
      return {};
    }
    // The chunk's shape according to the metadata.
    const auto& tmd = u.item->tensor;
    const chunk_storage_metadata* chunk = nullptr;
    auto hint = u.index.index;
    if (hint >= 0 && static_cast<size_t>(hint) < tmd.chunks.size()
        && tmd.chunks[static_cast<size_t>(hint)].offsets == u.index.offset)
      chunk = &tmd.chunks[static_cast<size_t>(hint)];
    for (size_t i = 0; chunk == nullptr && i < tmd.chunks.size(); ++i)
      if (tmd.chunks[i].offsets == u.index.offset)
        chunk = &tmd.chunks[i];
    if (chunk == nullptr)
      return make_error(errc::corrupt_metadata,
                        key + ": no chunk at these offsets in the metadata");
    return read_tensor_plan_item(loc, tmd.properties.type, chunk->sizes,
                                 u.reads, target, checksum, key, opts_.landing);
  }

  std::string dir_;
  filesystem_reader_options opts_;
  mutable std::mutex mx_;
  std::shared_ptr<const metadata> md_;
  /// The checkpoint set_up accepted (`fingerprint_of`).
  std::string fingerprint_;
  /// The checksum of the `.metadata` bytes the last `read_metadata` read.
  std::string read_checksum_;
};

} // namespace

storage_reader_ptr make_filesystem_reader(std::string dir,
                                          filesystem_reader_options opts) {
  if (opts.landing == landing_mode::automatic)
    detail::prepare_landing(false);
  return std::make_shared<filesystem_reader>(std::move(dir), opts);
}

} // namespace dcpp
