#include "formats/hf_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"

namespace optiq {

namespace fs = std::filesystem;
using json = nlohmann::json;
using safetensors_detail::printable;

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  check(in.good(), "{}: cannot open", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  check(!in.bad(), "{}: cannot read", p.string());
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", p.string(), printable(e.what()));
  }
}

// Shard names from the index must be plain file names in the directory.
bool plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
}

}  // namespace

HfCheckpoint::HfCheckpoint(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  check(fs::is_directory(dir, ec), "{}: not a directory", dir);
  const fs::path root(dir);
  const fs::path config_path = root / "config.json";
  check(is_file(config_path), "{}: config.json is missing (not a Hugging Face model directory)", dir);
  config_ = read_json(config_path);
  check(config_.is_object(), "{}: not a JSON object", config_path.string());

  const fs::path index_path = root / "model.safetensors.index.json";
  const fs::path single_path = root / "model.safetensors";
  // tensor name -> shard file name, from the index (empty for one file).
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> shard_names;
  if (is_file(index_path)) {
    const std::string ip = index_path.string();
    json index = read_json(index_path);
    check(index.is_object(), "{}: not a JSON object", ip);
    auto wm = index.find("weight_map");
    check(wm != index.end() && wm->is_object(), "{}: weight_map is missing or not an object", ip);
    check(!wm->empty(), "{}: weight_map is empty", ip);
    for (const auto& [name, file] : wm->items()) {
      check(file.is_string(), "{}: weight_map entry for {} is not a file name", ip, printable(name));
      const std::string& f = file.get_ref<const std::string&>();
      check(plain_file_name(f), "{}: weight_map entry for {} names \"{}\", which is not a file in the directory", ip,
            printable(name), printable(f));
      weight_map[name] = f;
      shard_names.push_back(f);
    }
    std::sort(shard_names.begin(), shard_names.end());
    shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());
    // A shard may be a symlink to anywhere (the hub cache links into
    // ../../blobs/), but only to a regular file: a device or FIFO never ends.
    for (const auto& s : shard_names) {
      check(fs::exists(root / s, ec), "{}: shard listed in model.safetensors.index.json is missing",
            (root / s).string());
      check(is_file(root / s), "{}: shard listed in model.safetensors.index.json is not a regular file",
            (root / s).string());
    }
  } else if (is_file(single_path)) {
    shard_names.push_back("model.safetensors");
  } else if (fs::exists(single_path, ec)) {
    fail("{}: not a regular file", single_path.string());
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json (optiq reads safetensors weights; convert "
         "pytorch_model.bin checkpoints to safetensors first)", dir);
  }

  std::map<std::string, size_t> shard_of_name;
  for (const auto& s : shard_names) {
    shard_of_name[s] = files_.size();
    files_.push_back(std::make_unique<SafetensorsFile>((root / s).string()));
  }

  // Every mapped tensor must be in its shard.
  for (const auto& [name, shard] : weight_map) {
    const SafetensorsFile& f = *files_[shard_of_name.at(shard)];
    check(f.find_tensor(name) != nullptr,
          "{}: tensor {} is mapped to {} by model.safetensors.index.json, but that shard does not contain it",
          f.path(), printable(name), shard);
  }

  std::vector<std::pair<const TensorView*, size_t>> all;
  for (size_t i = 0; i < files_.size(); ++i)
    for (const auto& t : files_[i]->tensors()) all.push_back({&t, i});
  std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first->name < b.first->name; });
  tensors_.reserve(all.size());
  file_index_.reserve(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    if (i > 0 && all[i].first->name == all[i - 1].first->name)
      fail("{}: tensor {} is in both {} and {}", dir, printable(all[i].first->name), files_[all[i - 1].second]->path(),
           files_[all[i].second]->path());
    index_.emplace(all[i].first->name, tensors_.size());
    tensors_.push_back(*all[i].first);
    file_index_.push_back(all[i].second);
  }
}

const TensorView* HfCheckpoint::find_tensor(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsFile* HfCheckpoint::file_of(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : files_[file_index_[it->second]].get();
}

bool HfCheckpoint::has_file(std::string_view name) const {
  if (name.empty()) return false;
  return is_file(fs::path(dir_) / fs::path(name));
}

}  // namespace optiq
