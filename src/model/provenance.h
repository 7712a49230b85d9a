// What every output records about how it was made (issue 15 item 4, docs/
// reliability.md "Reproducibility"): optiq's version, the command, the source
// model's files with their SHA-256, and the options that shape the output:
//
//   {"version": "0.1.0", "command": "quantize",
//    "source": {"name": "stories260K.gguf",
//               "files": [{"name": "stories260K.gguf", "bytes": 1185376, "sha256": "..."}]},
//    "options": {"--bits": "4", "--calib": {"file": "c4.txt", "sha256": "..."}, ...}}
//
// Plans, profiles and MLX config.json hold it as their "optiq" object; GGUF
// and safetensors metadata as "optiq.version", "optiq.command", and
// "optiq.source" / "optiq.options" (the JSON objects as text). Nothing in it
// depends on the run: no time, no host, no thread count, no output path, so
// that the same inputs and options give byte-identical files.
#pragma once
#include <future>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace optiq {

// The files a model is read from: a GGUF or llama2.c file (and its
// tokenizer.bin); of a Hugging Face / MLX directory, config.json, the weights
// (model.safetensors, or model.safetensors.index.json and every shard it
// lists) and the tokenizer files an MLX export copies. Paths as given.
std::vector<std::string> model_source_files(const std::string& model_path, const std::string& tokenizer_path = "");

// {"name": <file or directory name>, "files": [{"name", "bytes", "sha256"}]}:
// the files of model_source_files, named relative to the model directory (or
// by file name), each hashed in full, several files at once. SHA-256 reads
// every byte: about 1.5-2 GB/s a core with the CPU's SHA extensions.
nlohmann::json source_record(const std::string& model_path, const std::string& tokenizer_path = "");

// The same record with every "sha256" still 64 zeros (a digest's length):
// what an export lays out before the hashes are known (model/save_mlx.h
// writes it, then the real digests over it in place).
nlohmann::json source_record_pending(const std::string& model_path, const std::string& tokenizer_path = "");
// `record` (a source_record) with its digests replaced by source_record_pending's zeros.
nlohmann::json pending_source(nlohmann::json record);
// source_record computed on a thread of its own, started now, one file after
// another from its start (not on the thread pool), so that a streamed export
// reads the same pages meanwhile and the source is read from disk once.
std::shared_future<nlohmann::json> source_record_async(const std::string& model_path,
                                                       const std::string& tokenizer_path = "");

// source_record with the digests of some files known already (path as
// model_source_files gives it -> hex SHA-256: a streamed export hashed the
// weights as it read them); the others are hashed here.
nlohmann::json source_record_with(const std::string& model_path, const std::string& tokenizer_path,
                                  const std::map<std::string, std::string>& known_digests);

// {"name", "files": [{"name", "bytes", "mtime_ns"}]}: the source files as
// the file system describes them, known at once without reading them. What
// a streamed export's resume key names the source by (its SHA-256 is known
// only once the export has read everything; docs/reliability.md).
nlohmann::json source_fingerprint(const std::string& model_path, const std::string& tokenizer_path = "");

// {"file": <file name>, "sha256": ...} for an input file given as an option
// (calibration text, plan); the text itself when it is no regular file ("self").
nlohmann::json input_file_record(const std::string& path);

// {"version", "command", "source", "options"}: the object above.
nlohmann::json provenance(const std::string& command, nlohmann::json source, nlohmann::json options);

// The provenance block an output gets when its caller gave none: the version alone.
nlohmann::json provenance_or_version(const nlohmann::json& p);

}  // namespace optiq
