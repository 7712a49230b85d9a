// Sensitivity profiling: how much each quantizable weight matrix hurts the
// model (mean KL(ref || quantized) over calibration tokens) at each candidate
// affine format, with every other matrix left as it is.
//
// Reference pass: one forward per calibration window caches the residual
// stream entering every layer and the reference log-softmax rows of the scored
// positions (the second half of each window, as perplexity scores), so that a
// measurement re-runs only from the layer of the module it changes.
//
//  - exact: for each module x candidate, the module's Linear is swapped for a
//    fake-quantized fp32 copy (quantize then dequantize, QuantMethod::Search by
//    default), the model runs from that layer over every window, and the mean
//    KL over the scored positions is the damage. The Linear is swapped back.
//  - fast (a proxy): the Gram matrix G = mean x x^T of each module's input
//    (one extra partial pass per group of layers) gives
//      E(m, f) = sum_rows d G d^T,  d = W - dequant(quantize(W, f)),
//    the expected squared output error per token. The embedding's proxy is
//    sum_t freq(t) |d_t|^2 (plus the head proxy when tied). E is converted to
//    KL units by exact measurements at one anchor format per module (the
//    cheapest candidate with >= 3 bits, preferring group 64): on every
//    `anchor_every`-th layer (and the last), the ratio KL/E is measured and
//    interpolated linearly across layers for each module kind.
//
// Results are cached: the profile file (cache_path) is written, atomically,
// only when the profile is complete; while it runs, a checkpoint
// "<cache_path>.partial" is rewritten (atomically) after every module, and
// removed once the profile file is written. Entries present in either are not
// measured again, so a run that was interrupted (Ctrl-C, SIGKILL, a full
// disk, a power cut) resumes where its last checkpoint was, and ends with the
// same bytes as an uninterrupted run (tests/cli/test_crash_safety.cpp). A
// cache made for another model file (size, mtime), other calibration
// settings, or measured otherwise (measured_with: optiq version, backend,
// numerics, anchor windows, GPTQ options and whether its proxy is held
// out, layer-wise) is ignored with a warning.
//
// Layer-wise (ProfileOptions::layerwise, fast only): the same measurements
// with the windows run through one decoder layer at a time and each anchor
// carried as a stream of its own beside the reference (docs/scale.md).
//
// The model passed to profile_model is const to callers: its Linears are
// swapped during exact measurements and always restored (also on exceptions),
// so it must not be used concurrently.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "profile/calibration.h"
#include "model/gptq.h"
#include "quant/quantizer.h"

namespace optiq {

enum class ProfileMethod { Fast, Exact, Both };
// "fast", "exact", "both"; throws otherwise.
ProfileMethod parse_profile_method(const std::string& text);
std::string profile_method_name(ProfileMethod m);

// bits {2,3,4,5,6,8} x group sizes {32,64,128}.
std::vector<TensorFormat> default_profile_candidates();
// "2,3,4,5,6,8x32,64,128" (bits x group sizes) or a list "q4g64,q3g32,8"
// (bits alone take group 64). Throws on malformed or unsupported formats.
std::vector<TensorFormat> parse_candidates(const std::string& text);

// What a profile was measured on; a cache is reused only when these agree.
struct ProfileSource {
  std::string model_path;
  int64_t model_size = 0;   // bytes (sum over a directory's files)
  int64_t model_mtime = 0;  // seconds since the epoch (latest in a directory)
  // The calibration (source made absolute; samples 0 when a file does not say):
  // enough to rebuild the same windows.
  CalibrationOptions calib{.source = "", .samples = 0, .seq = 0};
  // Same model file and calibration (paths are not compared, only names).
  bool matches(const ProfileSource& o) const;
  std::string describe() const;
};
ProfileSource make_profile_source(const std::string& model_path, const CalibrationOptions& calib);

struct ProfileOptions {
  ProfileMethod method = ProfileMethod::Fast;
  std::vector<TensorFormat> candidates = default_profile_candidates();
  int anchor_every = 0;        // fast: anchors every N-th layer; 0: 1 if <= 12 layers, else 3
  // fast: the exact anchors' KL over this many calibration windows, evenly
  // spaced (0: all). The proxies always use every window; an anchor only
  // scales them to KL units, and a full-model pass per anchor over all the
  // windows is most of a large model's fast profile.
  int anchor_windows = 0;
  // fast: also quantize every layer matrix, the lm_head and a tied
  // embedding with GPTQ (model/gptq.h, from the Gram sums the proxies use;
  // the head's: the final norm's output) and keep, per module and format, the
  // rounding with the smaller proxy; the anchors measure that rounding. A
  // tied embedding's GPTQ is fitted to its head role only (dampened by
  // GptqOptions::tied_embed_damp), and its proxy adds the lookup role's
  // error as the other roundings' do; the two are in different units, so
  // where its proxy wins, its KL anchor is measured beside the plain
  // rounding's and GPTQ stays only if it is lower. (Layer-wise, a tied
  // embedding's anchor runs before the head's inputs are seen: no GPTQ, as
  // no weighting, there.) A plan then names GPTQ for those tensors, and
  // `quantize --plan` reproduces it.
  bool gptq = false;
  // GPTQ is fitted to the tokens its proxy is measured on, so an in-sample
  // proxy flatters it. Held out (the default): the input statistics are kept
  // in two halves by calibration window (even, odd) and GPTQ's proxy is that
  // of GPTQ fitted on one half measured on the other, plus the converse
  // (two-fold, over every token like the other roundings' proxies); its KL
  // anchors likewise measure each anchor window with GPTQ fitted on the other
  // half. One calibration window: in-sample, with a warning. The export
  // still fits GPTQ on every calibration token. false: in-sample (tests).
  bool gptq_heldout = true;
  GptqOptions gptq_options{};
  // fast: the search weighs each input channel's rounding error by its mean
  // x^2 over the calibration tokens (the diagonal of the proxies' Gram sums;
  // quantize --calib's activation weighting), for every matrix that has
  // inputs to weigh (not an untied embedding: a lookup; layer-wise, not a
  // tied one either). Recorded per entry as method "weighted", so that the
  // plan and the export round that way.
  bool weighted = false;
  std::string cache_path;      // "" = no cache file (nor checkpoint)
  ProfileSource source;        // recorded in the cache
  // How the profile was made (model/provenance.h), written as its "optiq"
  // object; null: the version alone.
  nlohmann::json provenance{};
  QuantMethod rounding = QuantMethod::Search;
  bool progress = true;
  int64_t gram_memory = 1ll << 30;  // bytes of Gram matrices held at once (fast)
  // fp32 bytes of a matrix's rows a proxy-only module is measured on at a
  // time (no whole fp32 copy of an 8B model's 2 GB lm_head).
  int64_t proxy_block_bytes = 128ll << 20;
  int64_t store_f32_limit = 1ll << 30;  // cached activations / log-probs above this go to bf16
  // A device backend (GPU): the reference log-probabilities stay in its
  // memory only when they take at most half of this fraction of the model's
  // weight bytes (the other half is for the Gram sums, an anchor's matrix and
  // the passes' activations); otherwise each window's rows are copied in from
  // page-locked host memory when a KL needs them. Keeps profiling within the
  // model's size + 20% of device memory, whatever the calibration set.
  double device_headroom = 0.2;
  // fast: layer-wise profiling (docs/scale.md, "Layer-wise"): the calibration
  // windows go through the model one decoder layer at a time, so each layer's
  // weights are read once per pass rather than once per window; the anchors
  // run layer-major too. Same numbers as the in-memory path on the CPU (to
  // fp rounding elsewhere); recorded in measured_with.
  bool layerwise = false;
  // layer-wise: bytes of activations held in memory (the reference residual
  // stream, the anchors' streams, the reference log-probabilities); the rest
  // goes to unlinked temporary files in spill_dir. 0: a quarter of the
  // available memory.
  int64_t layerwise_memory = 0;
  // "": the cache file's directory, else the system's temporary directory.
  std::string spill_dir;
};

struct FormatSensitivity {
  std::optional<double> kl;       // measured KL(ref || q), nats per scored token
  std::optional<double> proxy;    // fast proxy E(m, f)
  std::optional<double> kl_fast;  // proxy in KL units (SensitivityTable::calibrate_fast)
  // How the measured quantization was rounded: "" the search, "weighted" the
  // activation-weighted search (ProfileOptions::weighted), "gptq" GPTQ
  // (ProfileOptions::gptq: whichever gave the smaller proxy).
  std::string method;
};

struct ModuleSensitivity {
  ModuleInfo module;
  std::string anchor;  // anchor format name ("" when no candidate fits)
  std::map<std::string, FormatSensitivity> formats;  // by tensor_format_name
};

// Which numbers a plan should use as damage.
enum class DamageSource { Auto, Exact, Fast };  // Auto: exact where measured, else fast

struct SensitivityTable {
  ProfileSource source;
  std::vector<TensorFormat> candidates;
  std::string method;
  std::string rounding = "search";  // the roundings measured: "search" or "weighted", each maybe with ",gptq"
  // What else decides the numbers, beyond source and rounding: optiq version,
  // backend, numerics, anchor windows (fast), GPTQ options; a cache is reused
  // only when this is equal (null in files older than it: never reused).
  nlohmann::json measured_with{};
  nlohmann::json provenance{};  // the "optiq" object (null when the file has none)
  std::vector<ModuleSensitivity> modules;  // forward order (quantizable_modules)
  // This run only (cache hits excluded): exact KL measurements and proxies computed.
  int64_t exact_measured = 0, proxy_measured = 0;
  double seconds = 0;
  // Where the time went (reference, grams, quantize, proxy, exact): seconds.
  std::map<std::string, double> phase_seconds;

  // Fills kl_fast from the proxies and the exact KL at the anchors.
  void calibrate_fast();
  // module path -> format name -> damage. Throws if `use` asks for numbers that
  // are missing (e.g. Exact on a fast profile), naming the module.
  std::map<std::string, std::map<std::string, double>> damage(DamageSource use = DamageSource::Auto) const;
  // Spearman rank correlation between kl_fast and kl over every (module,
  // format) where both exist, anchors excluded; nullopt with fewer than 3.
  std::optional<double> spearman_fast_exact() const;
  // Number of (module, format) pairs with an exact KL / a proxy.
  int64_t count_exact() const;
  int64_t count_proxy() const;

  nlohmann::json to_json() const;
  // Validates module paths against the config (unknown ones are an error).
  static SensitivityTable from_json(const nlohmann::json& j, const ModelConfig& config, const std::string& where);
  static SensitivityTable read(const std::string& path, const ModelConfig& config);
  void write(const std::string& path) const;  // atomic
};

// Where profile_model keeps its checkpoint while profiling into `cache_path`.
std::string profile_checkpoint_path(const std::string& cache_path);

SensitivityTable profile_model(const Model& ref, const std::vector<std::vector<int32_t>>& windows,
                               const ProfileOptions& opt);

// Spearman rank correlation (average ranks for ties).
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace optiq
