#include "model/provenance.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/parallel.h"
#include "core/sha256.h"
#include "core/version.h"

namespace optiq {

namespace fs = std::filesystem;

namespace {

std::string base_name(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return fs::path(p).filename().string();
}

}  // namespace

std::vector<std::string> model_source_files(const std::string& model_path, const std::string& tokenizer_path) {
  std::vector<std::string> files;
  std::error_code ec;
  if (!fs::is_directory(model_path, ec)) {
    files.push_back(model_path);
    if (!tokenizer_path.empty()) files.push_back(tokenizer_path);
    return files;
  }
  const fs::path dir(model_path);
  auto add = [&](const std::string& name) {
    std::error_code e;
    if (fs::is_regular_file(dir / name, e)) files.push_back((dir / name).string());
  };
  add("config.json");
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::is_regular_file(index, ec)) {
    add("model.safetensors.index.json");
    std::set<std::string> shards;
    try {
      std::ifstream in(index);
      const nlohmann::json j = nlohmann::json::parse(in);
      for (const auto& [tensor, shard] : j.at("weight_map").items())
        if (shard.is_string()) shards.insert(shard.get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      fail("{}: malformed shard index: {}", index.string(), e.what());
    }
    for (const auto& s : shards) {
      // The loader refused any other name already (formats/hf_checkpoint.h).
      check(s.find('/') == std::string::npos && s != ".." && s != ".", "{}: shard name {} is not a plain file name",
            index.string(), s);
      add(s);
    }
  } else {
    add("model.safetensors");
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                        "generation_config.json", "chat_template.jinja"})
    add(f);
  if (!tokenizer_path.empty()) files.push_back(tokenizer_path);
  return files;
}

namespace {

const std::string kPendingDigest(64, '0');

// pool: several files at once on the thread pool; else one after another on
// the calling thread. hash false: every digest kPendingDigest. known: digests
// computed already, by path.
nlohmann::json make_source_record(const std::string& model_path, const std::string& tokenizer_path, bool pool,
                                  bool hash, const std::map<std::string, std::string>& known = {}) {
  const std::vector<std::string> files = model_source_files(model_path, tokenizer_path);
  std::vector<std::string> hashes(files.size());
  std::vector<uintmax_t> sizes(files.size());
  auto one = [&](int64_t i) {
    const auto k = known.find(fs::path(files[i]).lexically_normal().string());
    hashes[i] = !hash ? kPendingDigest : k != known.end() ? k->second : sha256_file(files[i]);
    std::error_code ec;
    sizes[i] = fs::file_size(files[i], ec);
  };
  if (pool) {
    parallel_for(static_cast<int64_t>(files.size()), one);
  } else {
    for (int64_t i = 0; i < static_cast<int64_t>(files.size()); ++i) one(i);
  }
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < files.size(); ++i)
    list.push_back({{"name", base_name(files[i])}, {"bytes", sizes[i]}, {"sha256", hashes[i]}});
  return {{"name", base_name(model_path)}, {"files", list}};
}

}  // namespace

nlohmann::json source_record(const std::string& model_path, const std::string& tokenizer_path) {
  return make_source_record(model_path, tokenizer_path, true, true);
}

nlohmann::json source_record_pending(const std::string& model_path, const std::string& tokenizer_path) {
  return make_source_record(model_path, tokenizer_path, false, false);
}

nlohmann::json source_record_with(const std::string& model_path, const std::string& tokenizer_path,
                                  const std::map<std::string, std::string>& known_digests) {
  std::map<std::string, std::string> known;  // by normalised path: "dir//x" and "dir/./x" are one file
  for (const auto& [path, digest] : known_digests) known[fs::path(path).lexically_normal().string()] = digest;
  return make_source_record(model_path, tokenizer_path, false, true, known);
}

nlohmann::json source_fingerprint(const std::string& model_path, const std::string& tokenizer_path) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& f : model_source_files(model_path, tokenizer_path)) {
    std::error_code ec;
    const auto bytes = fs::file_size(f, ec);
    const auto mtime = fs::last_write_time(f, ec);
    list.push_back({{"name", base_name(f)},
                    {"bytes", bytes},
                    {"mtime_ns", static_cast<int64_t>(
                                     std::chrono::duration_cast<std::chrono::nanoseconds>(mtime.time_since_epoch()).count())}});
  }
  return {{"name", base_name(model_path)}, {"files", list}};
}

nlohmann::json pending_source(nlohmann::json record) {
  if (record.is_object() && record.contains("files") && record["files"].is_array())
    for (auto& f : record["files"])
      if (f.is_object() && f.contains("sha256")) f["sha256"] = kPendingDigest;
  return record;
}

std::shared_future<nlohmann::json> source_record_async(const std::string& model_path,
                                                       const std::string& tokenizer_path) {
  return std::async(std::launch::async, [model_path, tokenizer_path] {
           return make_source_record(model_path, tokenizer_path, false, true);
         }).share();
}

nlohmann::json input_file_record(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return path;
  return {{"file", base_name(path)}, {"sha256", sha256_file(path)}};
}

nlohmann::json provenance(const std::string& command, nlohmann::json source, nlohmann::json options) {
  return {{"version", kOptiqVersion}, {"command", command}, {"source", std::move(source)}, {"options", std::move(options)}};
}

nlohmann::json provenance_or_version(const nlohmann::json& p) {
  if (p.is_object() && !p.empty()) return p;
  return {{"version", kOptiqVersion}};
}

}  // namespace optiq
