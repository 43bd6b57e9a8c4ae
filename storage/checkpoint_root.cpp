#include "storage/checkpoint_root.hpp"

#include "core/error.hpp"
#include "core/planner.hpp"
#include "storage/filesystem_layout.hpp"
#include "storage/posix_file.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <system_error>
#include <tuple>

namespace fs = std::filesystem;

namespace dcpp {

namespace {

caf::error io_error(const std::string& what, const std::error_code& ec) {
  return make_error(errc::io_error, what + ": " + ec.message());
}

caf::error io_error(const std::string& what, int err) {
  return io_error(what, std::error_code{err, std::generic_category()});
}

std::string join(const std::string& root, std::string_view name) {
  return (fs::path{root} / fs::path{std::string{name}}).string();
}

bool starts_with(std::string_view str, std::string_view prefix) {
  return str.substr(0, prefix.size()) == prefix;
}

/// What a scan of a root found.
struct root_content {
  bool exists = true;
  std::vector<step_entry> steps;
  /// Paths of `.trash-*` leftovers (any type).
  std::vector<std::string> trash;
};

/// Sets `committed` and `broken` from the step's commit record.
void set_state(step_entry& entry) {
  auto err = check_committed(entry.path);
  entry.committed = !err;
  if (err && code_of(err) != errc::not_found)
    entry.broken = describe(err);
}

/// Whether `name` looks like a step directory's name (`step_` and digits),
/// whether or not its number fits.
bool step_like(std::string_view name) {
  if (!starts_with(name, step_prefix) || name.size() == step_prefix.size())
    return false;
  auto digits = name.substr(step_prefix.size());
  return std::all_of(digits.begin(), digits.end(),
                     [](char ch) { return ch >= '0' && ch <= '9'; });
}

/// The last component of `path` (trailing slashes ignored).
std::string_view base_name(std::string_view path) {
  while (path.size() > 1 && path.back() == '/')
    path.remove_suffix(1);
  auto pos = path.find_last_of('/');
  return pos == std::string_view::npos ? path : path.substr(pos + 1);
}

/// Lists `root`; checks each step's commit record only if `check`.
caf::error scan(const std::string& root, root_content& out, bool check = true) {
  std::error_code ec;
  fs::directory_iterator it{root, ec};
  if (ec == std::errc::no_such_file_or_directory) {
    out.exists = false;
    return {};
  }
  if (ec)
    return io_error("cannot list checkpoint root " + root, ec);
  for (; it != fs::directory_iterator{}; it.increment(ec)) {
    auto name = it->path().filename().string();
    if (starts_with(name, trash_prefix)) {
      out.trash.push_back(join(root, name));
      continue;
    }
    if (!step_like(name))
      continue;
    // Real directories only: symbolic links and files are never steps.
    std::error_code type_ec;
    auto status = it->symlink_status(type_ec);
    if (type_ec || status.type() != fs::file_type::directory)
      continue;
    step_entry entry;
    // A number beyond 64 bits sorts last; `check_committed` names it.
    entry.step = parse_step_name(name).value_or(UINT64_MAX);
    entry.path = join(root, name);
    if (check || entry.step > max_step)
      set_state(entry);
    out.steps.push_back(std::move(entry));
  }
  if (ec)
    return io_error("cannot list checkpoint root " + root, ec);
  std::sort(out.steps.begin(), out.steps.end(),
            [](const step_entry& x, const step_entry& y) {
              return std::tie(x.step, x.path) < std::tie(y.step, y.path);
            });
  std::sort(out.trash.begin(), out.trash.end());
  return {};
}

caf::error remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec)
    return io_error("cannot remove " + path, ec);
  return {};
}

} // namespace

std::string step_name(uint64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%09llu",
                static_cast<unsigned long long>(step));
  return std::string{step_prefix} + buf;
}

std::string step_directory(const std::string& root, uint64_t step) {
  return join(root, step_name(step));
}

std::optional<uint64_t> parse_step_name(std::string_view name) {
  if (!starts_with(name, step_prefix))
    return std::nullopt;
  auto digits = name.substr(step_prefix.size());
  if (digits.empty())
    return std::nullopt;
  uint64_t result = 0;
  for (auto ch : digits) {
    if (ch < '0' || ch > '9')
      return std::nullopt;
    auto digit = static_cast<uint64_t>(ch - '0');
    if (result > (UINT64_MAX - digit) / 10)
      return std::nullopt;
    result = result * 10 + digit;
  }
  return result;
}

caf::error check_step_directory(const std::string& dir) {
  auto name = base_name(dir);
  if (!step_like(name))
    return caf::none;
  auto step = parse_step_name(name);
  if (!step || *step > max_step)
    return make_error(errc::invalid_argument,
                      dir + ": step number out of range (steps go up to "
                        + std::to_string(max_step)
                        + "); not a step a checkpoint manager writes, not "
                          "loaded");
  struct stat st;
  if (::lstat(dir.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
    return make_error(errc::path_escape,
                      dir
                        + ": is a symbolic link; a step directory is never "
                          "a link (not loaded, never written through)");
  return caf::none;
}

caf::error check_committed(const std::string& dir) {
  if (auto err = check_step_directory(dir))
    return err;
  auto md_path = join(dir, detail::metadata_name);
  struct stat st;
  if (::lstat(md_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)
      || st.st_size == 0)
    return make_error(errc::not_found, dir + ": no commit record");
  auto md = detail::read_metadata_file(dir);
  if (!md)
    return code_of(md.error()) == errc::not_found // removed since the lstat
             ? make_error(errc::corrupt_metadata, describe(md.error()))
             : std::move(md.error());
  if (auto err = validate_metadata(*md))
    return with_context(err, md_path, errc::corrupt_metadata);
  // A record that commits another step directory: a copy or a rename of
  // that step, not a checkpoint of this one (see the header).
  if (auto mine = parse_step_name(base_name(dir))) {
    auto recorded = base_name(md->checkpoint_id);
    auto theirs = parse_step_name(recorded);
    if (theirs && *theirs != *mine)
      return make_error(errc::corrupt_metadata,
                        md_path + ": commits " + std::string{recorded}
                          + " (recorded checkpoint_id " + md->checkpoint_id
                          + "), not step " + std::to_string(*mine)
                          + ": a copy or rename of another step, not loaded "
                            "as this one");
  }
  // A missing data file makes the record broken, not absent: never
  // errc::not_found here.
  if (auto err = detail::check_data_files(dir, *md))
    return with_context(err, md_path, errc::corrupt_item);
  return caf::none;
}

bool is_committed(const std::string& dir) {
  return !check_committed(dir);
}

caf::expected<std::vector<step_entry>> list_steps(const std::string& root) {
  root_content content;
  if (auto err = scan(root, content))
    return err;
  return std::move(content.steps);
}

caf::expected<std::vector<uint64_t>>
committed_steps(const std::string& root, std::vector<step_entry>* passed_over) {
  auto steps = list_steps(root);
  if (!steps)
    return std::move(steps.error());
  std::vector<uint64_t> result;
  for (const auto& entry : *steps)
    if (entry.committed && (result.empty() || result.back() != entry.step))
      result.push_back(entry.step);
  if (passed_over)
    for (auto i = steps->rbegin(); i != steps->rend(); ++i)
      if (!i->broken.empty() && (result.empty() || i->step > result.back()))
        passed_over->push_back(*i);
  return result;
}

caf::expected<step_entry>
latest_committed(const std::string& root,
                 std::vector<step_entry>* passed_over) {
  // Newest first, each commit record checked only until one validates.
  root_content content;
  if (auto err = scan(root, content, false))
    return err;
  for (auto i = content.steps.rbegin(); i != content.steps.rend(); ++i) {
    set_state(*i);
    if (i->committed)
      return std::move(*i);
    if (passed_over && !i->broken.empty())
      passed_over->push_back(*i);
  }
  return make_error(errc::not_found, "no committed checkpoint under " + root);
}

caf::expected<uint64_t> latest_committed_step(const std::string& root) {
  auto entry = latest_committed(root);
  if (!entry)
    return std::move(entry.error());
  return entry->step;
}

namespace {

/// Which committed entries (ascending) a prune keeps: one flag per entry.
using keep_selector
  = std::function<std::vector<bool>(const std::vector<const step_entry*>&)>;

/// The prune of `prune` and `prune_except`: victims are the committed
/// entries `select` does not keep, and uncommitted entries of steps older
/// than the newest committed one.
caf::expected<std::vector<std::string>>
prune_selected(const std::string& root, const keep_selector& select,
               std::vector<step_entry>* broken) {
  root_content content;
  if (auto err = scan(root, content))
    return err;
  if (!content.exists)
    return make_error(errc::not_found,
                      "no checkpoint root " + root + " (nothing to prune)");
  std::vector<std::string> removed;
  // Leftovers of a prune that crashed: already hidden, remove them first so
  // that their names are free again.
  for (const auto& path : content.trash) {
    if (auto err = remove_tree(path))
      return err;
    removed.push_back(path);
  }
  // Broken entries (neither committed nor uncommitted) are never victims
  // and never count.
  std::vector<const step_entry*> committed;
  for (const auto& entry : content.steps) {
    if (entry.committed)
      committed.push_back(&entry);
    else if (broken && !entry.broken.empty())
      broken->push_back(entry);
  }
  if (committed.empty())
    return removed;
  auto newest = committed.back()->step;
  auto kept = select(committed);
  std::vector<const step_entry*> victims;
  for (size_t i = 0; i < committed.size(); ++i)
    if (committed[i]->step != newest && (i >= kept.size() || !kept[i]))
      victims.push_back(committed[i]);
  for (const auto& entry : content.steps)
    if (!entry.committed && entry.broken.empty() && entry.step < newest)
      victims.push_back(&entry);
  if (victims.empty())
    return removed;
  // 1. Hide every victim.
  std::vector<std::string> hidden;
  for (auto victim : victims) {
    auto name = fs::path{victim->path}.filename().string();
    auto trash = join(root, std::string{trash_prefix} + name);
    if (::rename(victim->path.c_str(), trash.c_str()) != 0)
      return io_error("cannot rename " + victim->path + " to " + trash, errno);
    hidden.push_back(std::move(trash));
  }
  // 2. Make the renames durable before any byte of a victim disappears.
  if (auto err = detail::fsync_dir(root))
    return err;
  // 3. Remove.
  for (size_t i = 0; i < victims.size(); ++i) {
    if (auto err = remove_tree(hidden[i]))
      return err;
    removed.push_back(victims[i]->path);
  }
  return removed;
}

} // namespace

caf::expected<std::vector<std::string>>
prune(const std::string& root, size_t keep, std::vector<step_entry>* broken) {
  if (keep == 0)
    return make_error(errc::invalid_argument,
                      "prune " + root
                        + ": keep must be at least 1 (keeping nothing would "
                          "remove the latest checkpoint)");
  // The newest `keep` committed entries.
  auto newest_k = [keep](const std::vector<const step_entry*>& committed) {
    std::vector<bool> kept(committed.size(), false);
    auto first_kept = committed.size() > keep ? committed.size() - keep : 0;
    for (auto i = first_kept; i < committed.size(); ++i)
      kept[i] = true;
    return kept;
  };
  return prune_selected(root, newest_k, broken);
}

caf::expected<std::vector<std::string>>
prune_except(const std::string& root, const step_chooser& keep,
             std::vector<step_entry>* broken) {
  auto chosen = [&keep](const std::vector<const step_entry*>& committed) {
    std::vector<uint64_t> steps;
    for (auto entry : committed)
      if (steps.empty() || steps.back() != entry->step)
        steps.push_back(entry->step);
    auto kept_steps = keep(steps);
    std::sort(kept_steps.begin(), kept_steps.end());
    std::vector<bool> kept;
    for (auto entry : committed)
      kept.push_back(
        std::binary_search(kept_steps.begin(), kept_steps.end(), entry->step));
    return kept;
  };
  return prune_selected(root, chosen, broken);
}

} // namespace dcpp
