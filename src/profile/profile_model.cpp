// Profiling: the reference pass (log-probs, residual stream, Gram matrices),
// then one re-run from each module's layer per candidate format.
#include "profile/sensitivity.h"
#include "profile/sensitivity_detail.h"
#include "profile/input_stats.h"
#include "profile/spill_store.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <tuple>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/atomic_file.h"
#include "core/parallel.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/half.h"
#include "core/progress.h"
#include "core/version.h"
#include "core/memory.h"
#include "kernels/matmul.h"
#include "eval/perplexity.h"
#include "model/quantize_model.h"
#include "model/transformer.h"

namespace optiq {

using profile_detail::empty_table;
using profile_detail::fitting;
using profile_detail::InputStats;

namespace {

// Rows of floats kept as fp32, or bf16 when large; optionally also copied
// into a backend's memory (keep_in) for operations that read them there.
class RowStore {
 public:
  void init(size_t n, bool bf16) {
    bf16_ = bf16;
    n_ = n;
    if (bf16) h_.assign(n + (n & 1), 0);  // even: moved as whole floats
    else f_.assign(n, 0.0f);
  }
  // Copies the rows into be's memory when they take at most `max_bytes` and
  // a quarter of what it has free; else page-locks the host rows, which
  // in_backend then copies a window at a time. True when they are in be's memory.
  bool keep_in(Backend& be, double max_bytes) {
    if (be.host_memory()) return true;
    const int64_t words = words_for(n_);
    const double bytes = static_cast<double>(words) * 4;
    if (words > 0 && bytes <= max_bytes && bytes <= 0.25 * static_cast<double>(be.free_bytes())) {
      dev_ = be.upload(host_words(0), words);
      return true;
    }
    pin_ = be.pin_host(host_words(0), static_cast<size_t>(words) * 4);
    return false;
  }
  // Where rows from `off` are in be's memory: the kept copy, in place on a
  // host-memory backend, or else copied (n values) into `staging`.
  const void* in_backend(Backend& be, size_t off, size_t n, Buffer& staging) const {
    if (be.host_memory()) return ptr(off);
    if (dev_.size() > 0) return bf16_ ? static_cast<const void*>(reinterpret_cast<const uint16_t*>(dev_.data()) + off)
                                      : static_cast<const void*>(dev_.data() + off);
    // bf16 rows start at even offsets here (window rows x an even vocabulary,
    // or whole floats otherwise): copy whole floats from the aligned start.
    const size_t lead = bf16_ ? off & 1 : 0;
    const int64_t words = words_for(n + lead);
    if (staging.size() < words) staging = be.alloc(words);
    be.to_device(host_words(off - lead), words, staging.data());
    return bf16_ ? static_cast<const void*>(reinterpret_cast<const uint16_t*>(staging.data()) + lead)
                 : static_cast<const void*>(staging.data());
  }
  void put(size_t off, const float* x, size_t n) {
    if (bf16_)
      parallel_for_range(static_cast<int64_t>(n), 1 << 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) h_[off + i] = f32_to_bf16(x[i]);
      });
    else
      std::copy_n(x, n, f_.data() + off);
  }
  // Where row values from `off` are kept (bf16 words when bf16()).
  const void* ptr(size_t off) const {
    return bf16_ ? static_cast<const void*>(h_.data() + off) : static_cast<const void*>(f_.data() + off);
  }
  bool bf16() const { return bf16_; }
  void get(size_t off, size_t n, float* out) const {
    if (bf16_)
      parallel_for_range(static_cast<int64_t>(n), 1 << 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) out[i] = bf16_to_f32(h_[off + i]);
      });
    else
      std::copy_n(f_.data() + off, n, out);
  }
  float at(size_t i) const { return bf16_ ? bf16_to_f32(h_[i]) : f_[i]; }

 private:
  // Floats that hold n values (two bf16 words to a float).
  int64_t words_for(size_t n) const { return static_cast<int64_t>(bf16_ ? (n + 1) / 2 : n); }
  const float* host_words(size_t off) const {
    return bf16_ ? reinterpret_cast<const float*>(h_.data() + off) : f_.data() + off;
  }
  bool bf16_ = false;
  size_t n_ = 0;
  Buffer dev_;
  std::vector<float> f_;
  std::vector<uint16_t> h_;
  Backend::HostPin pin_{nullptr, [](void*) {}};  // declared after the rows: unpinned before they go
};

using Site = ActivationObserver::Site;

// Adds the seconds of its scope to a phase's total.
class PhaseTimer {
 public:
  PhaseTimer(std::map<std::string, double>& totals, const char* phase)
      : total_(totals[phase]), t0_(std::chrono::steady_clock::now()) {}
  ~PhaseTimer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point t0_;
};

// The reference pass's statistics: the residual stream entering each layer
// (copied to the host store) and the statistics of the lm_head's inputs
// (kept in the backend's memory).
class RefObserver : public ActivationObserver {
 public:
  explicit RefObserver(Backend& be) : be_(be) {}
  RowStore* hidden = nullptr;
  size_t total_tokens = 0, offset = 0;
  InputStats* head_stats = nullptr;  // set per window (GPTQ: the window's half)
  int64_t head_tokens = 0;           // the rows head_stats holds in all (0: total_tokens)
  bool backend_rows() const override { return true; }
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::LayerIn && hidden) {
      const float* rows = x;
      if (!be_.host_memory()) {
        host_.resize(static_cast<size_t>(n * cols));
        be_.to_host(x, n * cols, host_.data());
        rows = host_.data();
      }
      hidden->put((static_cast<size_t>(layer) * total_tokens + offset) * cols, rows, static_cast<size_t>(n * cols));
    }
    if (site == Site::HeadIn && head_stats) {
      if (head_stats->empty())
        *head_stats = InputStats(be_, cols, head_tokens > 0 ? head_tokens : static_cast<int64_t>(total_tokens));
      head_stats->add(x, n);
    }
  }

 private:
  Backend& be_;
  std::vector<float> host_;
};

struct StopForward {};

// An input site's statistics over the calibration tokens. With GPTQ
// (ProfileOptions::gptq) and more than one window, in two halves by window
// (even-indexed windows: half 0, odd: half 1), so that GPTQ fitted on one
// half's Gram sums is measured on the other's tokens (its held-out proxy);
// everything else reads the whole set as the sum of the halves. Otherwise
// half 0 holds every token and half 1 is empty. (Halves kept as rows take
// the whole set's memory; as Gram sums, twice a single set's.)
struct SiteStats {
  std::array<InputStats, 2> half;
  bool empty() const { return half[0].empty(); }
  int64_t cols() const { return half[0].cols(); }
  bool split() const { return !half[1].empty(); }
  // sum over every token of ||D x||^2 for D (rows x cols, backend memory).
  double quadratic(const float* d, int64_t rows) const {
    double q = half[0].quadratic(d, rows);
    if (split()) q += half[1].quadratic(d, rows);
    return q;
  }
  std::vector<double> channel_sums() const {
    std::vector<double> s = half[0].channel_sums();
    if (split()) {
      const std::vector<double> b = half[1].channel_sums();
      for (size_t k = 0; k < s.size(); ++k) s[k] += b[k];
    }
    return s;
  }
  // The Gram sums of half h (0, 1), or of every token (h == 2), on the host.
  std::vector<float> gram_on_host(int h) const {
    if (h < 2) return half[static_cast<size_t>(h)].gram_on_host();
    std::vector<float> g = half[0].gram_on_host();
    if (split()) {
      const std::vector<float> b = half[1].gram_on_host();
      for (size_t k = 0; k < g.size(); ++k) g[k] += b[k];
    }
    return g;
  }
};

// The input statistics of the four input sites of layers [l0, l1), in the
// backend's memory: the rows observed go to half `half` (set before each
// window), which holds tokens[half] of them in all. Stops the forward pass
// when it reaches layer l1 or the head.
class GramObserver : public ActivationObserver {
 public:
  GramObserver(Backend& be, int l0, int l1, std::array<int64_t, 2> tokens)
      : be_(be), l0_(l0), l1_(l1), tokens_(tokens), grams_(static_cast<size_t>(l1 - l0) * 4) {}
  int half = 0;
  bool backend_rows() const override { return true; }
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::HeadIn || (site == Site::LayerIn && layer >= l1_)) throw StopForward{};
    if (site == Site::LayerIn || layer < l0_) return;
    InputStats& g = grams_[static_cast<size_t>(layer - l0_) * 4 + static_cast<int>(site)].half[half];
    if (g.empty()) g = InputStats(be_, cols, tokens_[half]);
    g.add(x, n);
  }
  SiteStats& gram(int layer, int site) { return grams_[static_cast<size_t>(layer - l0_) * 4 + site]; }

 private:
  Backend& be_;
  int l0_, l1_;
  std::array<int64_t, 2> tokens_;
  std::vector<SiteStats> grams_;
};

// The per-layer input site a module multiplies (index into the Gram arrays).
int site_of(ModuleKind kind) {
  const auto site = module_kind_info(kind).input;
  return site && static_cast<int>(*site) < kLayerInputSites ? static_cast<int>(*site) : -1;
}

// What decides the numbers besides the source, the windows and the rounding
// (SensitivityTable::measured_with): a checkpoint or cache measured otherwise
// is not reused.
nlohmann::json measured_with(const Model& ref, const ProfileOptions& opt, size_t windows, bool gptq_heldout) {
  nlohmann::json m = {{"optiq", kOptiqVersion},
                      {"backend", std::string(default_backend().name())},
                      {"numerics", ref.llamacpp_numerics ? "llamacpp" : int8_decode() ? "int8" : "exact"},
                      {"quant_method", opt.rounding == QuantMethod::MinMax ? "minmax" : "search"}};
  if (opt.method == ProfileMethod::Fast && opt.anchor_windows > 0 && static_cast<size_t>(opt.anchor_windows) < windows)
    m["anchor_windows"] = opt.anchor_windows;
  // (head: GPTQ measured for the lm_head and a tied embedding too.)
  if (opt.gptq)
    m["gptq"] = {{"damp", opt.gptq_options.damp},
                 {"act_order", opt.gptq_options.act_order},
                 {"heldout", gptq_heldout},
                 {"head", true},
                 {"tied_embed_damp", opt.gptq_options.tied_embed_damp},
                 {"grid_passes", opt.gptq_options.grid_passes}};
  // Layer-wise: the same arithmetic on the CPU, but anchors' numbers may
  // differ in the last bits on a GPU and where the in-memory path keeps its
  // residual stream in bf16: a cache of one is not reused by the other.
  if (opt.layerwise) m["layerwise"] = true;
  return m;
}

// The candidate `source` needs a GGUF source with matrices in block types
// optiq keeps (it is resolved per tensor from ModelConfig::gguf_types).
void check_source_candidate(const Model& ref, const std::vector<TensorFormat>& candidates) {
  if (std::none_of(candidates.begin(), candidates.end(), [](const TensorFormat& f) { return f.is_source(); })) return;
  check(ref.format == SourceFormat::Gguf,
        "{}: the candidate 'source' keeps a tensor in the GGUF type its source file stores it in, but this model is "
        "a {}, not a GGUF file: drop 'source' from --candidates",
        ref.path, format_name(ref.format));
  std::set<std::string> types;
  bool any = false;
  for (const auto& m : quantizable_modules(ref.config)) {
    types.insert(std::string(dtype_name(m.source_type)));
    any = any || format_fits(module_format(source_candidate(), m), m.cols);
  }
  check(any,
        "{}: the candidate 'source': no weight matrix of this GGUF is stored in a block type optiq can keep (they "
        "are {}; keepable: Q2_K..Q6_K, Q4_0..Q8_0, IQ4_NL, IQ4_XS): drop 'source' from --candidates",
        ref.path, fmt::join(types, ", "));
}

// Takes the measurements of the table at `path` (a finished profile or a
// checkpoint) when it was made for the same source, rounding and settings.
void resume_from(const std::string& path, const ModelConfig& c, SensitivityTable& t) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;
  try {
    SensitivityTable old = SensitivityTable::read(path, c);
    if (!old.source.matches(t.source) || old.rounding != t.rounding) {
      warn("{}: cache made for {} (rounding {}); measuring again for {} (rounding {})", path, old.source.describe(),
           old.rounding, t.source.describe(), t.rounding);
      return;
    }
    if (old.measured_with != t.measured_with) {
      warn("{}: cache measured with {}; measuring again with {}", path,
           old.measured_with.is_null() ? std::string("unrecorded settings") : old.measured_with.dump(),
           t.measured_with.dump());
      return;
    }
    std::map<std::string, const ModuleSensitivity*> by_path;
    for (const auto& ms : old.modules) by_path[ms.module.path] = &ms;
    for (auto& ms : t.modules) {
      auto it = by_path.find(ms.module.path);
      if (it == by_path.end()) continue;
      for (const auto& [name, fs] : it->second->formats) {
        FormatSensitivity& dst = ms.formats[name];
        if (fs.kl) dst.kl = fs.kl;
        if (fs.proxy) dst.proxy = fs.proxy, dst.method = fs.method;
      }
    }
  } catch (const Error& e) {
    warn("ignoring cache: {}", e.what());
  }
}

// The finished table goes to the profile file; the checkpoint is no longer needed.
void write_final(const SensitivityTable& t, const std::string& cache_path) {
  if (cache_path.empty()) return;
  t.write(cache_path);
  const std::string checkpoint = profile_checkpoint_path(cache_path);
  std::error_code ec;
  std::filesystem::remove(checkpoint, ec);
  remove_stale_temporaries(checkpoint);  // what a killed run left while checkpointing
}

}  // namespace

std::string profile_checkpoint_path(const std::string& cache_path) { return cache_path + ".partial"; }

SensitivityTable profile_model(const Model& ref, const std::vector<std::vector<int32_t>>& windows,
                               const ProfileOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = ref.config;
  check(!windows.empty(), "profiling needs at least one calibration window");
  check(!opt.candidates.empty(), "profiling needs at least one candidate format");
  for (const auto& w : windows) check(w.size() >= 4, "calibration windows must hold at least 4 tokens");

  check(!opt.gptq || opt.method == ProfileMethod::Fast,
        "profiling GPTQ's rounding needs the fast method (its Gram sums): --method fast");
  check(!opt.layerwise || opt.method == ProfileMethod::Fast,
        "layer-wise profiling is a way of running the fast method: --method fast");
  check(!opt.weighted || opt.method == ProfileMethod::Fast,
        "the activation-weighted rounding is weighted by the fast method's Gram sums: --method fast");
  check_source_candidate(ref, opt.candidates);
  SensitivityTable t = empty_table(c, opt.candidates);
  t.source = opt.source;
  t.method = profile_method_name(opt.method);
  t.rounding = std::string(opt.weighted ? "weighted" : "search") + (opt.gptq ? ",gptq" : "");
  // GPTQ's proxies and anchors held out (ProfileOptions::gptq_heldout): the
  // input statistics in two halves by window. One window has no other half.
  const bool split_stats = opt.gptq && windows.size() >= 2;
  const bool gptq_heldout = split_stats && opt.gptq_heldout;
  if (opt.gptq && opt.gptq_heldout && !split_stats)
    warn("GPTQ's proxy: one calibration window, so no held-out half: measured on the tokens GPTQ is fitted to "
         "(optimistic; more --calib-samples give a held-out proxy)");
  t.measured_with = measured_with(ref, opt, windows.size(), gptq_heldout);
  t.provenance = opt.provenance;

  // Resume from the finished profile (other candidates, a measurement removed)
  // and from the checkpoint of an interrupted run.
  const std::string checkpoint = opt.cache_path.empty() ? "" : profile_checkpoint_path(opt.cache_path);
  if (!opt.cache_path.empty()) {
    resume_from(opt.cache_path, c, t);
    resume_from(checkpoint, c, t);
  }

  const int anchor_every = opt.anchor_every > 0 ? opt.anchor_every : (c.n_layers <= 12 ? 1 : 3);
  auto anchor_layer = [&](int l) { return l < 0 || l % anchor_every == 0 || l == c.n_layers - 1; };
  const bool all_exact = opt.method != ProfileMethod::Fast;
  const bool want_proxy = opt.method != ProfileMethod::Exact;

  // What to measure: per module, per fitting candidate, exact and/or proxy.
  struct Need {
    TensorFormat fmt;
    bool exact = false, proxy = false;
  };
  std::vector<std::vector<Need>> needs(t.modules.size());
  int64_t total = 0;
  // The progress line's ETA weighs a measurement by its module's size (a
  // tied embedding's first proxies take far longer than a layer's).
  double total_work = 0;
  auto work_of = [](const ModuleInfo& m) { return static_cast<double>(m.rows) * static_cast<double>(m.cols); };
  bool need_hidden = false, need_head_gram = false;
  std::set<int> gram_layers;
  for (size_t i = 0; i < t.modules.size(); ++i) {
    const auto& ms = t.modules[i];
    const ModuleInfo& m = ms.module;
    for (const auto& f : fitting(opt.candidates, m)) {
      const std::string name = tensor_format_name(f);
      auto it = ms.formats.find(name);
      const bool has_kl = it != ms.formats.end() && it->second.kl;
      const bool has_proxy = it != ms.formats.end() && it->second.proxy;
      Need n{f};
      n.exact = !has_kl && (all_exact || (name == ms.anchor && anchor_layer(m.layer)));
      n.proxy = !has_proxy && want_proxy;
      if (!n.exact && !n.proxy) continue;
      total += n.exact + n.proxy;
      total_work += (n.exact + n.proxy) * work_of(m);
      if (m.layer >= 0) need_hidden = true;
      // (Weighted: an anchor's rounding is weighted by the Gram sums' diagonal too.)
      const bool reads_grams = n.proxy || opt.weighted;
      if (reads_grams && m.layer >= 0) gram_layers.insert(m.layer);
      if ((reads_grams || opt.gptq) &&
          (m.kind == ModuleKind::LmHead || (m.kind == ModuleKind::Embed && c.tied_embeddings)))
        need_head_gram = true;
      needs[i].push_back(n);
    }
  }
  if (total == 0) {
    t.calibrate_fast();
    write_final(t, opt.cache_path);
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return t;
  }

  // Reference pass.
  const int64_t vocab = c.vocab_size, dim = c.dim;
  const size_t nw = windows.size();
  std::vector<size_t> tok_off(nw), scored_off(nw);
  std::vector<int64_t> from(nw);
  size_t total_tokens = 0, total_scored = 0;
  int64_t max_len = 0, max_scored = 0;
  for (size_t w = 0; w < nw; ++w) {
    const int64_t n = static_cast<int64_t>(windows[w].size());
    tok_off[w] = total_tokens;
    scored_off[w] = total_scored;
    from[w] = n / 2;
    total_tokens += n;
    total_scored += n - n / 2;
    max_len = std::max(max_len, n);
    max_scored = std::max(max_scored, n - n / 2);
  }
  // The half of the input statistics window w goes to (SiteStats), and each half's tokens.
  auto half_of = [&](size_t w) { return split_stats ? static_cast<int>(w % 2) : 0; };
  std::array<int64_t, 2> half_tokens{0, 0};
  for (size_t w = 0; w < nw; ++w)
    half_tokens[static_cast<size_t>(half_of(w))] += static_cast<int64_t>(windows[w].size());
  RowStore hidden, logp;
  // (Layer-wise: neither; one layer's residual stream at a time, and the
  // log-probabilities in a SpillStore at the end.)
  const size_t hidden_n =
      need_hidden && !opt.layerwise ? static_cast<size_t>(c.n_layers) * total_tokens * dim : 0;
  const size_t logp_n = total_scored * vocab;
  const bool logp_bf16 = logp_n * 4 > static_cast<size_t>(opt.store_f32_limit);
  hidden.init(hidden_n, hidden_n * 4 > static_cast<size_t>(opt.store_f32_limit));
  logp.init(opt.layerwise ? 0 : logp_n, logp_bf16);
  std::vector<double> token_freq(vocab, 0.0);
  for (const auto& w : windows)
    for (int32_t tok : w) {
      check(tok >= 0 && tok < vocab, "token id {} is outside the vocabulary of {}", tok, vocab);
      token_freq[tok] += 1.0 / total_tokens;
    }

  // Every pass runs on the default backend, and so do the statistics of its
  // outputs (Gram sums, log-probabilities, KL): on a GPU only the residual
  // stream and the reference log-probabilities come back to the host.
  Backend& be = default_backend();
  DeviceWeights weights(ref, be);
  Transformer tf(weights, static_cast<int>(max_len));
  tf.set_logits_in_backend(true);
  std::vector<float> logits(static_cast<size_t>(max_scored) * vocab);  // host copies (and the CPU's logits)
  const Backend::HostPin logits_pin = be.pin_host(logits.data(), logits.size() * sizeof(float));
  // The head's inputs (the lm_head's, a tied embedding's head role) over the
  // calibration tokens, in halves as the layers' (SiteStats).
  SiteStats head_gram;
  auto head_half = [&](RefObserver& obs, size_t w) {
    const int h = half_of(w);
    obs.head_stats = need_head_gram ? &head_gram.half[static_cast<size_t>(h)] : nullptr;
    obs.head_tokens = half_tokens[static_cast<size_t>(h)];
  };
  if (!opt.layerwise) {
    PhaseTimer timer(t.phase_seconds, "reference");
    RefObserver obs(be);
    obs.hidden = need_hidden ? &hidden : nullptr;
    obs.total_tokens = total_tokens;
    tf.set_observer(&obs);
    std::optional<Progress> p;
    if (opt.progress) p.emplace("profile: reference", static_cast<int64_t>(nw), "windows");
    for (size_t w = 0; w < nw; ++w) {
      obs.offset = tok_off[w];
      head_half(obs, w);
      tf.reset();
      tf.forward(windows[w], logits.data(), from[w]);
      const int64_t rows = static_cast<int64_t>(windows[w].size()) - from[w];
      be.log_softmax_rows(tf.backend_logits(), rows, vocab);
      be.to_host(tf.backend_logits(), rows * vocab, logits.data());
      logp.put(scored_off[w] * vocab, logits.data(), static_cast<size_t>(rows * vocab));
      if (p) p->update(static_cast<int64_t>(w + 1));
    }
    if (p) p->finish();
    tf.set_observer(nullptr);
    // Every exact measurement reads all of it: on a GPU, copying each window's
    // rows in again cost more than the KL itself (8B: 65 MB a window).
    double model_bytes = 0;  // the matrices as the backend holds them
    for (const auto& ms : t.modules) model_bytes += static_cast<double>(module_linear(ref.weights, ms.module).bytes());
    logp.keep_in(be, 0.5 * opt.device_headroom * model_bytes);
  }

  // Mean KL(ref || current model) over the scored rows, run from `layer` (-1: full forward).
  std::vector<float> hbuf(static_cast<size_t>(max_len) * dim);  // a window's hidden states, on their way in
  const Backend::HostPin hbuf_pin = be.pin_host(hbuf.data(), hbuf.size() * sizeof(float));
  Buffer ref_staging;  // a window's reference rows when they are not kept in the backend
  const size_t kl_windows = opt.method == ProfileMethod::Fast && opt.anchor_windows > 0
                                ? std::min(nw, static_cast<size_t>(opt.anchor_windows))
                                : nw;
  // (kl_sums: the KL sum of each anchor window k into sums[k], of half
  // `half`'s windows only when half >= 0, and the rows scored into count.)
  auto kl_sums = [&](int layer, int half, std::vector<double>& sums, int64_t& count) {
    for (size_t k = 0; k < kl_windows; ++k) {
      const size_t w = k * nw / kl_windows;  // evenly spaced; all of them in order when kl_windows == nw
      if (half >= 0 && half_of(w) != half) continue;
      const int64_t n = static_cast<int64_t>(windows[w].size());
      tf.reset();
      if (layer >= 0) {
        hidden.get((static_cast<size_t>(layer) * total_tokens + tok_off[w]) * dim, static_cast<size_t>(n * dim),
                   hbuf.data());
        tf.forward_from_layer(layer, hbuf.data(), n, logits.data(), from[w]);
      } else {
        tf.forward(windows[w], logits.data(), from[w]);
      }
      const int64_t rows = n - from[w];
      const void* ref_rows = logp.in_backend(be, scored_off[w] * vocab, static_cast<size_t>(rows * vocab), ref_staging);
      sums[k] = be.kl_sum(ref_rows, logp.bf16(), tf.backend_logits(), rows, vocab);
      count += rows;
    }
  };

  // Input statistics (Gram sums or rows) of a group of layers, computed when first needed.
  std::map<int, std::array<SiteStats, 4>> grams;
  auto ensure_grams = [&](int layer) {
    if (grams.count(layer)) return;
    grams.clear();
    PhaseTimer timer(t.phase_seconds, "grams");
    const auto tokens = static_cast<int64_t>(total_tokens);
    auto site_bytes = [&](int64_t cols) {
      return split_stats ? InputStats::bytes(cols, half_tokens[0]) + InputStats::bytes(cols, half_tokens[1])
                         : InputStats::bytes(cols, tokens);
    };
    const int64_t per_layer =
        2 * site_bytes(dim) + site_bytes(c.q_dim()) + site_bytes(c.hidden_dim);  // in the backend's memory
    int l1 = layer + static_cast<int>(std::max<int64_t>(1, opt.gram_memory / std::max<int64_t>(per_layer, 1)));
    l1 = std::min(l1, c.n_layers);
    while (l1 > layer + 1 && !gram_layers.count(l1 - 1)) --l1;
    GramObserver obs(be, layer, l1, half_tokens);
    tf.set_observer(&obs);
    for (size_t w = 0; w < nw; ++w) {
      obs.half = half_of(w);
      const int64_t n = static_cast<int64_t>(windows[w].size());
      hidden.get((static_cast<size_t>(layer) * total_tokens + tok_off[w]) * dim, static_cast<size_t>(n * dim),
                 hbuf.data());
      tf.reset();
      try {
        tf.forward_from_layer(layer, hbuf.data(), n, logits.data(), n);
      } catch (const StopForward&) {
      }
    }
    tf.set_observer(nullptr);
    tf.reset();
    for (int l = layer; l < l1; ++l)
      for (int s = 0; s < 4; ++s) grams[l][s] = std::move(obs.gram(l, s));
  };
  // Mean over the calibration tokens of ||D x||^2: D (rows x cols, backend
  // memory) against the input statistics g.
  // (g: SiteStats, every token, or InputStats, a half's tokens: still per calibration token.)
  auto gram_proxy = [&](const float* d, int64_t rows, int64_t cols, const auto& g) {
    check(g.cols() == cols, "profile: input statistics of {} channels for a matrix of {} columns", g.cols(), cols);
    return std::max(g.quadratic(d, rows), 0.0) / static_cast<double>(total_tokens);
  };

  // The input statistics module m's proxy reads: the head's for the lm_head
  // and a tied embedding (its head role), none for an untied one (a lookup),
  // else its layer's site (ensure_grams first).
  auto proxy_stats = [&](const ModuleInfo& m) -> const SiteStats* {
    if (m.kind == ModuleKind::LmHead || (m.kind == ModuleKind::Embed && c.tied_embeddings)) return &head_gram;
    if (m.kind == ModuleKind::Embed) return nullptr;
    return &grams[m.layer][site_of(m.kind)];
  };
  // An embedding's lookup error for its error D (m.rows x m.cols, backend
  // memory, rows r0...): each token's row error, as often as the token
  // occurs; 0 for the other modules.
  std::vector<double> row_err;
  auto lookup_error = [&](const ModuleInfo& m, const float* d, int64_t r0, int64_t rows) {
    if (m.kind != ModuleKind::Embed) return 0.0;
    row_err.resize(static_cast<size_t>(rows));
    be.row_sq_sums(d, rows, m.cols, row_err.data());
    double e = 0;
    for (int64_t r = 0; r < rows; ++r) e += token_freq[r0 + r] * row_err[r];
    return e;
  };
  // Whether GPTQ is measured for module m: every layer matrix, the lm_head
  // and a tied embedding (GPTQ of its head role; layer-wise, its anchor runs
  // before the head's statistics exist: plain there, as its weighting).
  auto gptq_for = [&](const ModuleInfo& m) {
    return opt.gptq && (m.layer >= 0 || m.kind == ModuleKind::LmHead ||
                        (m.kind == ModuleKind::Embed && c.tied_embeddings && !opt.layerwise));
  };

  std::optional<Progress> progress;
  if (opt.progress) {
    progress.emplace("profile", total, "measurements");
    progress->set_total_work(total_work);
  }
  int64_t done = 0;
  double work_done = 0;
  auto advance = [&](const ModuleInfo& m) {
    ++done;
    work_done += work_of(m);
    if (progress) progress->update_work(done, work_done, m.path);
  };
  // The export's recipe (bf16 scales for Gemma): the profile measures what ships.
  const QuantizeOptions search_qo = QuantizeRecipe::for_model(ref.config, opt.rounding).options();
  // Mean x^2 of each input channel of module m over the calibration tokens
  // (the diagonal of the Gram sums its proxy reads; the statistic quantize
  // --calib weighs by); empty for a lookup-only embedding.
  auto input_energy = [&](const ModuleInfo& m) -> std::vector<float> {
    const SiteStats* g = nullptr;
    if (m.kind == ModuleKind::LmHead || (m.kind == ModuleKind::Embed && c.tied_embeddings)) {
      g = &head_gram;
    } else if (m.kind != ModuleKind::Embed) {
      ensure_grams(m.layer);
      g = &grams[m.layer][site_of(m.kind)];
    }
    if (!g || g->cols() != m.cols) return {};
    const std::vector<double> sums = g->channel_sums();
    std::vector<float> e(static_cast<size_t>(m.cols));
    for (int64_t k = 0; k < m.cols; ++k) e[k] = static_cast<float>(sums[k]) / static_cast<float>(total_tokens);
    return e;
  };
  // ProfileOptions::gptq: by (layer, site, act-order, the Gram sums' half: 0, 1, or 2 for every token,
  // grid refits).
  std::map<std::tuple<int, int, bool, int, int>, GptqHessian> hessians;
  // A KL anchor: the model with module m's matrix replaced by fakes[0], or
  // (two of them: GPTQ held out) by fakes[h] on the windows of half h; in
  // memory (the default path): every anchor window from m's layer.
  auto measure_anchor = [&](const ModuleInfo& m, const Linear& original, std::vector<Linear> fakes,
                            FormatSensitivity& fs) {
    {
      PhaseTimer timer(t.phase_seconds, "exact");
      std::vector<double> sums(kl_windows, 0.0);
      int64_t count = 0;
      for (size_t h = 0; h < fakes.size(); ++h) {
        fakes[h].set_act_rounding(original.act_rounding());
        WeightSwap swap(weights, m, std::move(fakes[h]));
        kl_sums(m.layer, fakes.size() > 1 ? static_cast<int>(h) : -1, sums, count);
      }
      double sum = 0;
      for (double v : sums) sum += v;  // in window order, as the layer-wise path adds them
      fs.kl = sum / static_cast<double>(std::max<int64_t>(count, 1));
    }
    ++t.exact_measured;
    advance(m);
  };
  // Measures what module i needs (its proxies when do_proxy, its exact KL
  // anchors when do_exact); each anchor's fake-quantized matrix goes to `anchor`.
  using AnchorFn = std::function<void(const ModuleInfo&, const Linear&, std::vector<Linear>, FormatSensitivity&)>;
  auto measure_module = [&](size_t i, bool do_proxy, bool do_exact, const AnchorFn& anchor) {
    // The needs asked for now (the layer-wise path measures an embedding's
    // anchor before its proxies).
    std::vector<Need> ns;
    for (Need n : needs[i]) {
      n.proxy = n.proxy && do_proxy;
      n.exact = n.exact && do_exact;
      if (n.proxy || n.exact) ns.push_back(n);
    }
    if (ns.empty()) return;
    ModuleSensitivity& ms = t.modules[i];
    const ModuleInfo& m = ms.module;
    const Linear& original = module_linear(ref.weights, m);
    const int64_t numel = m.rows * m.cols;
    if (m.layer < 0) grams.clear();  // the embedding and lm_head read none: their memory first (8B: 1 GB)
    // This module's rounding: weighted by its inputs' mean x^2 when asked and
    // known. (Layer-wise, a tied embedding's anchor starts before the
    // lm_head's inputs have been seen: it is rounded plainly, proxy and
    // anchor alike, and the plan says so.)
    const bool weigh = opt.weighted && !(opt.layerwise && m.kind == ModuleKind::Embed);
    const std::vector<float> importance = weigh ? input_energy(m) : std::vector<float>{};
    const std::string search_method = importance.empty() ? "" : "weighted";
    QuantizeOptions qo = search_qo;
    if (!importance.empty()) qo.importance = importance.data();
    // Proxies a block of rows at a time, every candidate per block, so no
    // fp32 copy of the whole matrix is held (an 8B model's lm_head: 2.1 GB
    // each for its values and their error): for modules with proxies only,
    // and for matrices larger than a block, whose KL anchors then swap in the
    // fake-quantized matrix made from the packed one (quantized from the
    // weights a block at a time): one fp32 copy instead of three. (The packed
    // matrix itself, swapped in, moved the anchors' KL by up to 0.2% on
    // stories260K: the packed kernels' own arithmetic.) GPTQ rounds whole
    // matrices: its modules keep the path below.
    const bool proxies_only = std::none_of(ns.begin(), ns.end(), [](const Need& n) { return n.exact; });
    const bool large = numel * static_cast<int64_t>(sizeof(float)) > opt.proxy_block_bytes;
    if ((proxies_only || large) && !gptq_for(m)) {
      if (m.kind != ModuleKind::Embed && m.kind != ModuleKind::LmHead) ensure_grams(m.layer);
      const SiteStats* g = proxy_stats(m);
      const int64_t block_rows =
          std::clamp<int64_t>(opt.proxy_block_bytes / static_cast<int64_t>(sizeof(float) * m.cols), 1, m.rows);
      Buffer wb = be.alloc(block_rows * m.cols), eb = be.alloc(block_rows * m.cols);
      std::vector<float> host_block, host_err;  // a device backend that cannot quantize a format: the host does
      std::vector<double> e(ns.size(), 0.0);
      const bool any_proxy = std::any_of(ns.begin(), ns.end(), [](const Need& n) { return n.proxy; });
      for (int64_t r0 = 0; any_proxy && r0 < m.rows; r0 += block_rows) {
        const int64_t r1 = std::min(m.rows, r0 + block_rows), rows = r1 - r0;
        be.weight_rows_to_f32(weights.module(m), r0, r1, wb.data());
        host_block.clear();
        for (size_t k = 0; k < ns.size(); ++k) {
          if (!ns[k].proxy) continue;
          const TensorFormat& f = ns[k].fmt;
          {
            PhaseTimer timer(t.phase_seconds, "quantize");
            if (!be.fake_quantize(f, qo, wb.data(), rows, m.cols, true, eb.data())) {
              if (be.host_memory()) {
                fake_quantize_into(f, wb.data(), rows, m.cols, qo, true, eb.data());
              } else {
                if (host_block.empty()) {
                  host_block.resize(static_cast<size_t>(rows * m.cols));
                  be.to_host(wb.data(), rows * m.cols, host_block.data());
                }
                host_err.resize(host_block.size());
                fake_quantize_into(f, host_block.data(), rows, m.cols, qo, true, host_err.data());
                be.to_device(host_err.data(), rows * m.cols, eb.data());
              }
            }
          }
          PhaseTimer timer(t.phase_seconds, "proxy");
          e[k] += lookup_error(m, eb.data(), r0, rows);
          if (g) e[k] += gram_proxy(eb.data(), rows, m.cols, *g);
        }
      }
      wb = Buffer(), eb = Buffer();
      for (size_t k = 0; k < ns.size(); ++k) {
        const Need& n = ns[k];
        FormatSensitivity& fs = ms.formats[tensor_format_name(n.fmt)];
        if (n.proxy) {
          fs.proxy = e[k];
          fs.method = n.fmt.is_source() ? "" : search_method;  // (kept blocks are not rounded)
          ++t.proxy_measured;
          advance(m);
        }
        if (n.exact) {
          Linear fake;
          {
            PhaseTimer timer(t.phase_seconds, "quantize");
            fake = Linear::from_f32(
                dequantize_matrix(quantize_in_row_blocks(n.fmt, original, qo, opt.proxy_block_bytes)), m.rows,
                m.cols);
          }
          std::vector<Linear> fakes;
          fakes.push_back(std::move(fake));
          anchor(m, original, std::move(fakes), fs);
        }
      }
      if (!checkpoint.empty()) t.write(checkpoint);
      return;
    }
    // The module's fp32 values from its uploaded weights (no host copy, no
    // upload: an 8B model's matrices are 30 GB of fp32). The backend quantizes
    // where it can (a GPU: affine formats), else the host does from its own
    // fp32 copy, made on first need, and the result goes to the backend.
    Buffer w_be = be.alloc(numel);
    be.weights_to_f32(weights.module(m), w_be.data());
    // The host's fp32 values: on a host-memory backend the same array (an
    // 8B model's embedding is 2 GB of fp32), else a copy made on first need.
    std::optional<std::vector<float>> w_copy;
    auto host_w = [&]() -> const float* {
      if (be.host_memory()) return w_be.data();
      if (!w_copy) w_copy = original.to_f32();
      return w_copy->data();
    };
    Buffer out = be.alloc(numel);
    auto quantized = [&](const TensorFormat& f, bool error_out) {
      PhaseTimer timer(t.phase_seconds, "quantize");
      if (be.fake_quantize(f, qo, w_be.data(), m.rows, m.cols, error_out, out.data())) return;
      // On the host, in blocks of rows, into a host copy of `out`'s rows.
      if (be.host_memory()) return fake_quantize_into(f, host_w(), m.rows, m.cols, qo, error_out, out.data());
      std::vector<float> dq(static_cast<size_t>(numel));
      fake_quantize_into(f, host_w(), m.rows, m.cols, qo, error_out, dq.data());
      be.to_device(dq.data(), numel, out.data());
    };
    // GPTQ's rounding of this module, fitted to the Gram sums of half
    // `half` of the calibration tokens (2: all of them), those the proxies
    // read; each Hessian factorised once per input site, column order and half.
    auto gptq_dequantized = [&](const TensorFormat& f, int half) -> std::optional<std::vector<float>> {
      PhaseTimer timer(t.phase_seconds, "gptq");
      const int site = site_of(m.kind);  // (-1 with layer -1: the head's inputs)
      const bool act_order = gptq_uses_act_order(f, opt.gptq_options);
      const int passes = gptq_grid_passes(f, opt.gptq_options);
      const auto key = std::tuple{m.layer, site, act_order, half, passes};
      auto h = hessians.find(key);
      if (h == hessians.end()) {
        if (hessians.size() > 8) hessians.clear();  // a few layers' worth at a time
        const std::vector<float> g = proxy_stats(m)->gram_on_host(half);
        // On a GPU the factor and GPTQ itself run there (model/gptq.h).
        h = hessians.emplace(key, gptq_prepare(g.data(), m.cols, act_order, gptq_damp(opt.gptq_options, m), passes,
                                               be.host_memory() ? nullptr : &be))
                .first;
      }
      GptqResult r = gptq_quantize(f, host_w(), m.rows, m.cols, h->second, qo);
      if (r.fallback) return std::nullopt;
      return dequantize_matrix(r.q);
    };
    // A tied embedding's GPTQ fits its head role only, and its proxy adds the
    // lookup role's error, in other units: where GPTQ's proxy wins, its KL
    // anchor is checked against the plain rounding's, and if that is no
    // higher GPTQ is dropped for every format of the module (the proxies
    // rank roundings within a role, the anchor across both).
    const bool check_gptq = gptq_for(m) && m.kind == ModuleKind::Embed;
    std::optional<bool> gptq_ok;                 // the anchors' verdict, once measured
    std::map<std::string, double> plain_proxy;  // the plain rounding's proxy per format, measured here
    // The plain rounding of format f as an anchor's matrix.
    auto plain_fake = [&](const TensorFormat& f) {
      quantized(f, false);
      if (be.host_memory()) return Linear::from_f32_view(out.data(), m.rows, m.cols);  // `out` outlives the swap
      std::vector<float> dq(static_cast<size_t>(numel));
      be.to_host(out.data(), numel, dq.data());
      return Linear::from_f32(std::move(dq), m.rows, m.cols);
    };
    for (const Need& n : ns) {
      const std::string name = tensor_format_name(n.fmt);
      FormatSensitivity& fs = ms.formats[name];
      if (n.proxy) {
        if (m.kind != ModuleKind::Embed && m.kind != ModuleKind::LmHead) ensure_grams(m.layer);
        quantized(n.fmt, true);
        PhaseTimer timer(t.phase_seconds, "proxy");
        const SiteStats* gs = proxy_stats(m);
        const double e =
            lookup_error(m, out.data(), 0, m.rows) + (gs ? gram_proxy(out.data(), m.rows, m.cols, *gs) : 0.0);
        fs.proxy = e;
        fs.method = n.fmt.is_source() ? "" : search_method;
        // (`source` is exact already; a tied embedding whose anchor turned
        // GPTQ down is not quantized with it again.)
        if (gptq_for(m) && !n.fmt.is_source() && gptq_ok != false) {
          // (A tied embedding: GPTQ fits its head role; its lookup role's
          // error is added as in `e`, half from each fit when held out.)
          const SiteStats& g = *gs;
          auto error_of = [&](std::vector<float>& dq) {  // W - dq, into `out`
            const float* w = host_w();
            for (int64_t k = 0; k < numel; ++k) dq[k] = w[k] - dq[k];
            be.to_device(dq.data(), numel, out.data());
          };
          std::optional<double> eg;
          if (gptq_heldout) {
            // Held out, two-fold: GPTQ fitted on half 0's tokens measured on
            // half 1's, plus the converse; over every token, as `e` is.
            auto a = gptq_dequantized(n.fmt, 0);
            auto b = a ? gptq_dequantized(n.fmt, 1) : std::nullopt;
            if (a && b) {
              error_of(*a);
              double sum = gram_proxy(out.data(), m.rows, m.cols, g.half[1]);
              sum += 0.5 * lookup_error(m, out.data(), 0, m.rows);
              error_of(*b);
              sum += gram_proxy(out.data(), m.rows, m.cols, g.half[0]);
              sum += 0.5 * lookup_error(m, out.data(), 0, m.rows);
              eg = sum;
            }
          } else if (auto dq = gptq_dequantized(n.fmt, 2)) {
            error_of(*dq);
            eg = gram_proxy(out.data(), m.rows, m.cols, g) + lookup_error(m, out.data(), 0, m.rows);
          }
          if (check_gptq) plain_proxy[name] = e;
          if (eg && *eg < e) fs.proxy = *eg, fs.method = "gptq";
        }
        ++t.proxy_measured;
        advance(m);
      }
      if (n.exact) {
        std::vector<Linear> fakes;
        if (fs.method == "gptq") {
          if (gptq_heldout) {
            // Held out as its proxy: each anchor window's KL with GPTQ fitted
            // on the other half's tokens (fakes[h] for the windows of half h).
            auto on_1 = gptq_dequantized(n.fmt, 1);
            auto on_0 = on_1 ? gptq_dequantized(n.fmt, 0) : std::nullopt;
            if (on_1 && on_0) {
              fakes.push_back(Linear::from_f32(std::move(*on_1), m.rows, m.cols));
              fakes.push_back(Linear::from_f32(std::move(*on_0), m.rows, m.cols));
            }
          } else if (auto g = gptq_dequantized(n.fmt, 2)) {  // the rounding that ships, in-sample
            fakes.push_back(Linear::from_f32(std::move(*g), m.rows, m.cols));
          }
        }
        const bool gptq = !fakes.empty();
        if (fakes.empty()) fakes.push_back(plain_fake(n.fmt));
        anchor(m, original, std::move(fakes), fs);
        if (gptq && check_gptq && !gptq_ok && fs.kl && plain_proxy.count(name)) {
          FormatSensitivity plain;  // (a comparison, not a measurement of the table)
          std::vector<Linear> p;
          p.push_back(plain_fake(n.fmt));
          anchor(m, original, std::move(p), plain);
          --t.exact_measured, --done, work_done -= work_of(m);
          gptq_ok = plain.kl && *fs.kl < *plain.kl;
          if (!*gptq_ok) {
            for (const auto& [f, e] : plain_proxy)
              if (ms.formats[f].method == "gptq") ms.formats[f].proxy = e, ms.formats[f].method = search_method;
            fs.kl = plain.kl;
          }
        }
      }
    }
    if (!checkpoint.empty()) t.write(checkpoint);
  };
  // Layer-wise (ProfileOptions::layerwise; docs/scale.md): the windows go
  // through the model a decoder layer at a time (every window through layer
  // l, then l + 1), so each layer's weights are read once per pass, not once
  // per window. While the residual stream entering layer l is at hand, the
  // layer's Gram sums (the same sums, in the same window order, as the
  // in-memory path) give its proxies, and each of its KL anchors starts a
  // stream of its own: the anchor windows through layer l with the matrix
  // swapped. Those streams then go through every later layer with the
  // reference sweep (layer-major too: a layer's weights are read once for all
  // the streams and windows), and through the final norm and lm_head once the
  // reference log-probabilities exist: the same arithmetic as a whole-model
  // pass per window, in another order. Streams and log-probabilities stay in
  // memory up to the budget (ProfileOptions::layerwise_memory), the rest in
  // unlinked temporary files (SpillStore).
  auto profile_layer_by_layer = [&]() {
    using profile_detail::SpillStore;
    int64_t left = opt.layerwise_memory > 0 ? opt.layerwise_memory : available_memory_bytes() / 4;
    auto on_disk = [&](int64_t bytes) {  // in memory while it fits what is left of the budget
      if (bytes <= left) {
        left -= bytes;
        return false;
      }
      return true;
    };
    std::string dir = opt.spill_dir;
    if (dir.empty() && !opt.cache_path.empty()) {
      dir = std::filesystem::path(opt.cache_path).parent_path().string();
      if (dir.empty()) dir.assign(1, '.');  // not = ".": GCC 12 warns (-Wrestrict, a false positive)
    }
    // The anchor windows (as measure_kl picks them) and where each one's rows
    // start in an anchor's stream.
    std::vector<size_t> aw(kl_windows), a_off(kl_windows);
    size_t a_tokens = 0;
    for (size_t k = 0; k < kl_windows; ++k) {
      aw[k] = k * nw / kl_windows;
      a_off[k] = a_tokens;
      a_tokens += windows[aw[k]].size();
    }
    std::vector<float> hin(static_cast<size_t>(max_len) * dim), hout(hin.size()), ref_rows;
    const Backend::HostPin hin_pin = be.pin_host(hin.data(), hin.size() * sizeof(float));
    const Backend::HostPin hout_pin = be.pin_host(hout.data(), hout.size() * sizeof(float));
    const size_t ref_n = total_tokens * dim;
    SpillStore cur, next;  // the reference stream entering this layer, and the next
    cur.init(ref_n, false, on_disk(static_cast<int64_t>(ref_n) * 4), dir);
    next.init(ref_n, false, on_disk(static_cast<int64_t>(ref_n) * 4), dir);
    SpillStore logp_rows;  // the reference log-probabilities, made after the last layer
    auto len = [&](size_t w) { return static_cast<int64_t>(windows[w].size()); };

    // Runs layer l on rows [off, off + n * dim) of `s` (each window in turn:
    // `offsets` gives where each starts), writing the result to `to` (may be s).
    // (before: called with each window's index before it runs.)
    auto layer_pass = [&](int l, const SpillStore& s, SpillStore& to, const std::vector<size_t>& wins,
                          const std::vector<size_t>& offsets, const std::function<void(size_t)>& before = nullptr) {
      for (size_t k = 0; k < wins.size(); ++k) {
        if (before) before(wins[k]);
        const int64_t n = len(wins[k]);
        s.get(offsets[k] * dim, static_cast<size_t>(n * dim), hin.data());
        tf.reset();
        tf.forward_layers(l, l + 1, hin.data(), n, hout.data());
        to.put(offsets[k] * dim, hout.data(), static_cast<size_t>(n * dim));
      }
    };
    std::vector<size_t> all(nw);
    for (size_t w = 0; w < nw; ++w) all[w] = w;
    std::vector<size_t> ref_aoff(kl_windows);  // the anchor windows' rows in the reference stream
    for (size_t k = 0; k < kl_windows; ++k) ref_aoff[k] = tok_off[aw[k]];

    // The KL(ref || the model) sum of each anchor window k whose final
    // residual stream is in `s` (from offsets), through the final norm and
    // lm_head, into sums[k] (of half `half`'s windows only when half >= 0),
    // and the rows scored into count.
    auto head_kl_sums = [&](const SpillStore& s, const std::vector<size_t>& offsets, int half,
                            std::vector<double>& sums, int64_t& count) {
      for (size_t k = 0; k < kl_windows; ++k) {
        const size_t w = aw[k];
        if (half >= 0 && half_of(w) != half) continue;
        const int64_t n = len(w), rows = n - from[w];
        s.get(offsets[k] * dim, static_cast<size_t>(n * dim), hin.data());
        tf.reset();
        tf.forward_from_layer(c.n_layers, hin.data(), n, logits.data(), from[w]);
        ref_rows.resize(static_cast<size_t>(rows * vocab));
        logp_rows.get(scored_off[w] * vocab, ref_rows.size(), ref_rows.data());
        const float* ref_in = ref_rows.data();
        if (!be.host_memory()) {
          if (ref_staging.size() < rows * vocab) ref_staging = be.alloc(rows * vocab);
          be.to_device(ref_rows.data(), rows * vocab, ref_staging.data());
          ref_in = ref_staging.data();
        }
        sums[k] = be.kl_sum(ref_in, false, tf.backend_logits(), rows, vocab);
        count += rows;
      }
    };
    // Their mean, with fakes[h] of module m (or none) on half h's windows.
    auto head_kl = [&](const SpillStore& s, const std::vector<size_t>& offsets, const ModuleInfo* m,
                       std::vector<Linear> fakes) {
      std::vector<double> sums(kl_windows, 0.0);
      int64_t count = 0;
      if (fakes.empty()) head_kl_sums(s, offsets, -1, sums, count);
      for (size_t h = 0; h < fakes.size(); ++h) {
        WeightSwap swap(weights, *m, std::move(fakes[h]));
        head_kl_sums(s, offsets, fakes.size() > 1 ? static_cast<int>(h) : -1, sums, count);
      }
      double sum = 0;
      for (double v : sums) sum += v;  // in window order, as the in-memory path adds them
      return sum / static_cast<double>(std::max<int64_t>(count, 1));
    };

    // An anchor's stream, from its layer to the head.
    struct Stream {
      const ModuleInfo* m = nullptr;
      FormatSensitivity* fs = nullptr;
      SpillStore rows;
      int next_layer = 0;          // the layer its rows enter
      std::optional<Linear> tied;  // a tied embedding's matrix: the head multiplies by it too
    };
    std::vector<std::unique_ptr<Stream>> streams;
    auto finish_anchor = [&](const ModuleInfo& m) {
      ++t.exact_measured;
      advance(m);
    };
    // (fakes: one matrix for every anchor window, or fakes[h] for those of
    // half h: GPTQ held out, layer matrices and the lm_head only.)
    auto start_anchor = [&](const ModuleInfo& m, const Linear& original, std::vector<Linear> fakes,
                            FormatSensitivity& fs) {
      PhaseTimer timer(t.phase_seconds, "exact");
      check(fakes.size() == 1 || m.kind != ModuleKind::Embed, "profile: held-out anchor matrices for {}", m.path);
      for (Linear& f : fakes) f.set_act_rounding(original.act_rounding());
      Linear& fake = fakes[0];
      if (m.kind == ModuleKind::LmHead) {  // after the last layer: `cur` holds the final stream
        fs.kl = head_kl(cur, ref_aoff, &m, std::move(fakes));
        finish_anchor(m);
        return;
      }
      auto st = std::make_unique<Stream>();
      st->m = &m;
      st->fs = &fs;
      st->rows.init(a_tokens * dim, false, on_disk(static_cast<int64_t>(a_tokens * dim) * 4), dir);
      if (m.kind == ModuleKind::Embed) {
        if (c.tied_embeddings) {
          st->tied.emplace(Linear::from_f32(fake.to_f32(), m.rows, m.cols));
          st->tied->set_act_rounding(original.act_rounding());
        }
        WeightSwap swap(weights, m, std::move(fake));
        for (size_t k = 0; k < kl_windows; ++k) {
          const int64_t n = len(aw[k]);
          tf.reset();
          tf.embed_rows(windows[aw[k]], hout.data());
          st->rows.put(a_off[k] * dim, hout.data(), static_cast<size_t>(n * dim));
        }
        st->next_layer = 0;
      } else {
        for (size_t h = 0; h < fakes.size(); ++h) {
          WeightSwap swap(weights, m, std::move(fakes[h]));
          for (size_t k = 0; k < kl_windows; ++k) {
            if (fakes.size() > 1 && half_of(aw[k]) != static_cast<int>(h)) continue;
            const int64_t n = len(aw[k]);
            cur.get(ref_aoff[k] * dim, static_cast<size_t>(n * dim), hin.data());
            tf.reset();
            tf.forward_layers(m.layer, m.layer + 1, hin.data(), n, hout.data());
            st->rows.put(a_off[k] * dim, hout.data(), static_cast<size_t>(n * dim));
          }
        }
        st->next_layer = m.layer + 1;
      }
      streams.push_back(std::move(st));
    };

    tf.set_hold_pages(true);
    struct Unhold {
      Transformer& tf;
      ~Unhold() { tf.set_hold_pages(false); }
    } unhold{tf};
    {
      PhaseTimer timer(t.phase_seconds, "reference");
      for (size_t w = 0; w < nw; ++w) {
        tf.reset();
        tf.embed_rows(windows[w], hout.data());
        cur.put(tok_off[w] * dim, hout.data(), static_cast<size_t>(len(w) * dim));
      }
    }
    // The embedding's anchor starts here (its proxy, which may need the
    // lm_head's Gram sums, comes at the end).
    for (size_t i = 0; i < t.modules.size(); ++i)
      if (t.modules[i].module.kind == ModuleKind::Embed) measure_module(i, false, true, start_anchor);
    for (int l = 0; l < c.n_layers; ++l) {
      bool layer_needs = false;
      for (size_t i = 0; i < t.modules.size(); ++i) layer_needs |= t.modules[i].module.layer == l && !needs[i].empty();
      const bool want_grams = gram_layers.count(l) || (opt.gptq && layer_needs);
      {
        PhaseTimer timer(t.phase_seconds, "reference");
        grams.clear();
        GramObserver gobs(be, l, l + 1, half_tokens);
        RefObserver none(be);  // (no statistics: the same pass as with them)
        tf.set_observer(want_grams ? static_cast<ActivationObserver*>(&gobs) : &none);
        try {
          layer_pass(l, cur, next, all, tok_off, [&](size_t w) { gobs.half = half_of(w); });
        } catch (...) {
          tf.set_observer(nullptr);
          throw;
        }
        tf.set_observer(nullptr);
        if (want_grams)
          for (int s = 0; s < 4; ++s) grams[l][s] = std::move(gobs.gram(l, s));
      }
      for (size_t i = 0; i < t.modules.size(); ++i)
        if (t.modules[i].module.layer == l) measure_module(i, true, true, start_anchor);
      {
        PhaseTimer timer(t.phase_seconds, "exact");
        for (auto& st : streams)
          if (st->next_layer == l) {
            layer_pass(l, st->rows, st->rows, aw, a_off);
            st->next_layer = l + 1;
          }
      }
      grams.clear();
      tf.release_pages(l);
      swap(cur, next);
    }
    {
      // The head: the reference log-probabilities (and the lm_head's Gram sums).
      PhaseTimer timer(t.phase_seconds, "reference");
      logp_rows.init(logp_n, logp_bf16, on_disk(static_cast<int64_t>(logp_n) * (logp_bf16 ? 2 : 4)), dir);
      next.clear();
      RefObserver obs(be);
      obs.total_tokens = total_tokens;
      tf.set_observer(&obs);
      try {
        for (size_t w = 0; w < nw; ++w) {
          const int64_t n = len(w), rows = n - from[w];
          head_half(obs, w);
          cur.get(tok_off[w] * dim, static_cast<size_t>(n * dim), hin.data());
          tf.reset();
          tf.forward_from_layer(c.n_layers, hin.data(), n, logits.data(), from[w]);
          be.log_softmax_rows(tf.backend_logits(), rows, vocab);
          be.to_host(tf.backend_logits(), rows * vocab, logits.data());
          logp_rows.put(scored_off[w] * vocab, logits.data(), static_cast<size_t>(rows * vocab));
        }
      } catch (...) {
        tf.set_observer(nullptr);
        throw;
      }
      tf.set_observer(nullptr);
    }
    {
      PhaseTimer timer(t.phase_seconds, "exact");
      for (auto& st : streams) {
        std::optional<WeightSwap> swap;
        if (st->tied) swap.emplace(weights, *st->m, std::move(*st->tied));
        st->fs->kl = head_kl(st->rows, a_off, nullptr, {});
        st->rows.clear();
        finish_anchor(*st->m);
      }
      streams.clear();
    }
    if (!checkpoint.empty()) t.write(checkpoint);
    // The embedding's proxies and the lm_head (its anchor on the final stream).
    for (size_t i = 0; i < t.modules.size(); ++i) {
      const ModuleKind k = t.modules[i].module.kind;
      if (t.modules[i].module.layer < 0) measure_module(i, true, k != ModuleKind::Embed, start_anchor);
    }
    tf.release_pages(-1);
  };
  if (!opt.layerwise) {
    for (size_t i = 0; i < t.modules.size(); ++i) measure_module(i, true, true, measure_anchor);
  } else {
    profile_layer_by_layer();
  }
  if (progress) progress->finish();
  t.calibrate_fast();
  write_final(t, opt.cache_path);
  t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

}  // namespace optiq
