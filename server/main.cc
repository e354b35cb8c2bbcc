// deltaserve: the gRPC server. Loads one Qwen3.5 checkpoint, runs its continuous-batching engine, and
// serves deltaserve.v1.TextGeneration and Models, grpc.health.v1, reflection and Prometheus /metrics.
#include <ATen/ATen.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "api/models_service.h"
#include "api/call_gate.h"
#include "api/openai/http_server.h"
#include "api/protobuf_log.h"
#include "api/status_convert.h"
#include "api/text_generation_service.h"
#include "api/transport_security.h"
#include "api/vision_service.h"
#include "cli/command_line.h"
#include "cli/default_model.h"
#include "cli/model_flags.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "deltaserve/kernels/tri_inverse.h"
#include "engine/engine.h"
#include "engine/generation_config.h"
#include "metrics/process_collector.h"
#include "metrics/prometheus_engine_metrics.h"
#include "metrics/prometheus_vision_metrics.h"
#include "models/padre/model.h"
#include "models/qwen35/model.h"
#include "runner/model_runner.h"
#include "runner/startup_thread.h"
#include "tokenizer/tokenizer.h"

ABSL_FLAG(std::string, model, "",
          "Checkpoint directory (config.json, *.safetensors, tokenizer.json), or NAME=DIR to name it (default: "
          "$DELTASERVE_MODEL_DIR, else the shipped qwen35-small beside the binary: "
          "<prefix>/share/deltaserve/models/ when installed, <source>/models/ in a build tree)");
ABSL_FLAG(std::string, model_name, "", "Name requests use for the model (default: the directory's basename)");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address the gRPC server listens on");
ABSL_FLAG(int32_t, port, 50051, "gRPC port");
ABSL_FLAG(int32_t, metrics_port, 9090, "Prometheus /metrics port; 0 disables");
ABSL_FLAG(int32_t, http_port, 0,
          "OpenAI-compatible HTTP API port (/v1/chat/completions, /v1/completions, /v1/models, /health) on --host; "
          "0 disables (docs/openai.md)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(std::string, dtype, "float32", "Weights and activations: float32 or bfloat16");
ABSL_FLAG(std::string, weight_dtype, "same",
          "Projection weights: same (as --dtype), int8 or int4 (CPU only: quantized at load, one scale per 32 "
          "values; about 3.8x / 7x fewer bytes than float32 for decode to read)");
ABSL_FLAG(
    std::string, inverse_method, "auto",
    "Chunk inverse of the delta-rule prefill: auto, neumann, neumann-fast, neumann-int16, neumann-int8, "
    "neumann-int8-block, neumann-int8-refine, neumann-fp8-block, neumann-fp8-refine, product, forward, "
    "solve-triangular (docs/kernels.md compares them)");
ABSL_FLAG(std::string, state_dtype, "fp32",
          "Recurrent decode state: fp32, bf16, int8, int8-sr, int8-coarse, fp8");
ABSL_FLAG(int64_t, max_num_seqs, 8, "Sequences running at once (slots)");
ABSL_FLAG(int64_t, kv_block_size, 16, "Tokens per paged KV cache block (a power of two, 8 to 1024)");
ABSL_FLAG(double, gpu_memory_utilization, 0.9,
          "CUDA: fraction of the GPU's memory this process may use; the paged KV cache gets what is left once "
          "weights, sequence state and a working reserve are counted (capacity is logged and exported)");
ABSL_FLAG(int64_t, kv_cache_tokens, 0,
          "Paged KV cache capacity in tokens (0: max-num-seqs x max-model-len on CPU, sized from "
          "--gpu-memory-utilization on CUDA)");
ABSL_FLAG(bool, cuda_graphs, true,
          "CUDA: capture the decode step and the detector's forward pass as CUDA graphs per batch-size bucket "
          "(--cuda-graphs=false: eager)");
ABSL_FLAG(bool, async_scheduling, true,
          "CUDA: launch each engine step before the previous step's tokens are read back, streaming them while "
          "the GPU runs (steps that time layers or sample with penalties still run one at a time). No effect "
          "on the CPU, where there is nothing to overlap");
ABSL_FLAG(int64_t, max_model_len, 0,
          "Tokens per sequence, prompt and output (0: min(4096, max_position_embeddings))");
ABSL_FLAG(int64_t, max_batched_tokens, 0,
          "Tokens per engine step: running decodes plus prefill chunks (0: 512 on the CPU; 8192 on CUDA, as "
          "vLLM's default, where fewer, larger prefill steps serve 1.10-1.12x more tokens/s at concurrency "
          "64-128 than 2048, at the cost of a longer wait for the first token while a step prefills)");
ABSL_FLAG(int64_t, prefill_chunk, 0,
          "Largest piece of one prompt prefilled in one engine step, a multiple of 64 (0: 256 on the CPU, "
          "where smaller pieces keep running streams flowing, 2048 on CUDA, where a prefill step is bound by "
          "its kernel launches and a prompt in fewer pieces reaches its first token sooner)");
ABSL_FLAG(int64_t, max_queue, 256, "Requests that may wait for a slot; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, threads, 0,
          "CPU threads each model op may use (0: all cores). Small models decode faster with 1: per-op "
          "thread start-up costs more than the work (docs/serving.md)");
ABSL_FLAG(std::string, layer_metrics, "sampled",
          "Per-layer latency histograms (deltaserve_layer_duration_seconds): off, sampled (a fraction of steps, "
          "see --layer-metrics-sample-rate) or all (every step)");
ABSL_FLAG(double, layer_metrics_sample_rate, 0.05, "With --layer-metrics=sampled: fraction of steps timed, (0, 1]");
ABSL_FLAG(std::string, vision_model, "",
          "Also serve a PADRe detector from this directory (config.json, model.safetensors) over "
          "deltaserve.v1.Vision");
ABSL_FLAG(std::string, vision_model_name, "", "Name requests use for the detector (default: the directory's basename)");
ABSL_FLAG(int64_t, vision_max_batch, 8, "Images per detector forward pass at most (dynamic batching)");
ABSL_FLAG(double, vision_max_delay_ms, 2.0, "How long the first queued image waits for others to batch with");
ABSL_FLAG(int64_t, vision_max_queue, 64, "Images that may wait for the detector; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, vision_max_pixels, 16'000'000,
          "Largest image accepted, width x height (read from the file's header before decoding; 48 MB as RGB)");
ABSL_FLAG(int64_t, vision_max_inflight_pixels, 64'000'000,
          "Pixels of all images decoded and not yet answered, at most (bounds their memory; beyond: "
          "RESOURCE_EXHAUSTED, retry later); at least --vision-max-pixels");
ABSL_FLAG(double, shutdown_grace, 30.0, "Seconds running requests may take to finish on SIGTERM/SIGINT");
// Security: transport, authentication, exposure and limits (docs/security.md).
ABSL_FLAG(std::string, tls_cert, "", "TLS: the server's certificate chain (PEM); with --tls-key, gRPC is served over TLS");
ABSL_FLAG(std::string, tls_key, "", "TLS: the private key of --tls-cert (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "mTLS: CA bundle (PEM) that client certificates must chain to; clients without one are refused");
ABSL_FLAG(int32_t, tls_reload_interval, 10,
          "Seconds between checks of the TLS files for renewal (new handshakes use new files; streams go on)");
ABSL_FLAG(std::string, auth_token_file, "",
          "Bearer tokens, one per line (at least 16 characters each): every call but health must send "
          "metadata \"authorization: Bearer <token>\" (else UNAUTHENTICATED)");
ABSL_FLAG(bool, reflection, true, "Serve gRPC server reflection (--reflection=false hides the schema)");
ABSL_FLAG(std::string, metrics_host, "127.0.0.1",
          "Address /metrics listens on (0.0.0.0 to expose it; the images and Kubernetes manifests do)");
ABSL_FLAG(int64_t, max_request_bytes, int64_t{24} << 20,
          "Largest request message accepted, bytes (gRPC's receive limit; the default covers the 20 MiB image "
          "limit); larger ones get RESOURCE_EXHAUSTED from gRPC");
ABSL_FLAG(double, rate_limit, 0, "Calls/s per client address, token bucket; 0: unlimited (RESOURCE_EXHAUSTED "
                                  "with a retry-after-ms trailer beyond)");
ABSL_FLAG(double, rate_burst, 0, "Token bucket size of --rate-limit (0: max(1, rate))");

namespace {

namespace q = deltaserve::models::qwen35;
namespace api = deltaserve::api;

int g_signal_pipe[2] = {-1, -1};

void OnSignal(int) {
  const char c = 1;
  const int saved = errno;
  (void)!::write(g_signal_pipe[1], &c, 1);  // async-signal-safe; all work happens on the waiting thread
  errno = saved;
}

int Fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "deltaserve: %s\n", message.c_str());
  return code;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string Basename(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const size_t slash = dir.rfind('/');
  return slash == std::string::npos ? dir : dir.substr(slash + 1);
}

int Run() {
  const bool default_model = absl::GetFlag(FLAGS_model).empty();
  std::string dir = default_model ? deltaserve::cli::DefaultModelDir() : absl::GetFlag(FLAGS_model);
  std::string name = absl::GetFlag(FLAGS_model_name);
  // --model NAME=DIR names the model in place (a path holding '=' before its first '/' is not taken apart).
  const size_t eq = dir.find('=');
  if (eq != std::string::npos && eq > 0 && dir.find('/') > eq && !FileExists(dir)) {
    if (!name.empty()) return Fail("--model: NAME=DIR and --model-name both name the model; give one");
    name = dir.substr(0, eq);
    dir = dir.substr(eq + 1);
  }
  if (default_model && !FileExists(dir + "/config.json"))
    return Fail("--model not given and no default model found (looked in " + deltaserve::cli::DefaultModelSearchPath() +
                    "); pass --model DIR or set DELTASERVE_MODEL_DIR",
                1);
  if (!FileExists(dir + "/config.json"))
    return Fail("--model: " + dir + " holds no config.json (a Qwen3.5 checkpoint directory); see --help", 1);
  if (name.empty()) name = Basename(dir);
  const int32_t port = absl::GetFlag(FLAGS_port), metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (port < 0 || port > 65535) return Fail(absl::StrCat("--port: must be in [0, 65535], got ", port));
  const int32_t http_port = absl::GetFlag(FLAGS_http_port);
  if (http_port < 0 || http_port > 65535)
    return Fail(absl::StrCat("--http-port: must be in [0, 65535], got ", http_port));
  if (metrics_port < 0 || metrics_port > 65535)
    return Fail(absl::StrCat("--metrics-port: must be in [0, 65535], got ", metrics_port));
  const double grace_s = absl::GetFlag(FLAGS_shutdown_grace);
  if (!(grace_s >= 0)) return Fail("--shutdown-grace: must be >= 0 seconds");

  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  absl::StatusOr<q::ModelOptions> parsed = deltaserve::cli::ModelOptionsFromFlags(
      dtype, absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_inverse_method), absl::GetFlag(FLAGS_state_dtype),
      absl::GetFlag(FLAGS_weight_dtype));
  if (!parsed.ok()) return Fail(std::string(parsed.status().message()));
  q::ModelOptions options = *parsed;
  deltaserve::runner::RunnerOptions runner_options;
  runner_options.max_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  if (runner_options.max_seqs <= 0) return Fail("--max-num-seqs: must be positive");
  // The runner checks these (its messages name the option: kv_block_size, gpu_memory_utilization, ...).
  runner_options.kv_block_size = absl::GetFlag(FLAGS_kv_block_size);
  runner_options.gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
  runner_options.kv_cache_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  runner_options.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);

  absl::StatusOr<q::Qwen35Config> config = q::LoadQwen35Config(dir);
  if (!config.ok()) return Fail(std::string(config.status().message()), 1);
  const int64_t max_pos = config->max_position_embeddings > 0 ? config->max_position_embeddings : 4096;
  runner_options.max_model_len = absl::GetFlag(FLAGS_max_model_len) > 0 ? absl::GetFlag(FLAGS_max_model_len)
                                                                        : std::min<int64_t>(4096, max_pos);
  if (runner_options.max_model_len < 2 || runner_options.max_model_len > max_pos)
    return Fail(absl::StrCat("--max-model-len: must be in [2, max_position_embeddings ", max_pos, "], got ",
                             runner_options.max_model_len));
  deltaserve::engine::EngineOptions engine_options;
  engine_options.max_queue = absl::GetFlag(FLAGS_max_queue);
  engine_options.max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens);
  engine_options.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  if (engine_options.prefill_chunk < 0 || engine_options.prefill_chunk % 64 != 0)
    return Fail(absl::StrCat("--prefill-chunk: must be 0 (automatic) or a positive multiple of 64, got ",
                             engine_options.prefill_chunk));
  if (engine_options.prefill_chunk == 0) engine_options.prefill_chunk = options.device.is_cuda() ? 2048 : 256;
  if (engine_options.max_queue < 1) return Fail("--max-queue: must be >= 1");
  if (engine_options.max_batched_tokens < 0)
    return Fail(absl::StrCat("--max-batched-tokens: must be 0 (automatic) or positive, got ",
                             engine_options.max_batched_tokens));
  if (engine_options.max_batched_tokens == 0)
    engine_options.max_batched_tokens = options.device.is_cuda() ? 8192 : 512;
  const std::string layer_metrics = absl::GetFlag(FLAGS_layer_metrics);
  if (layer_metrics == "off") {
    engine_options.layer_metrics = deltaserve::engine::LayerMetricsMode::kOff;
  } else if (layer_metrics == "sampled") {
    engine_options.layer_metrics = deltaserve::engine::LayerMetricsMode::kSampled;
  } else if (layer_metrics == "all") {
    engine_options.layer_metrics = deltaserve::engine::LayerMetricsMode::kAll;
  } else {
    return Fail(absl::StrCat("--layer-metrics: must be off, sampled or all, got \"", layer_metrics, "\""));
  }
  engine_options.layer_metrics_sample_rate = absl::GetFlag(FLAGS_layer_metrics_sample_rate);
  engine_options.intra_op_threads = absl::GetFlag(FLAGS_threads);
  engine_options.async_scheduling = absl::GetFlag(FLAGS_async_scheduling) && options.device.is_cuda();
  if (engine_options.intra_op_threads < 0)
    return Fail(absl::StrCat("--threads: must be >= 0, got ", engine_options.intra_op_threads));
  if (!(engine_options.layer_metrics_sample_rate > 0 && engine_options.layer_metrics_sample_rate <= 1))
    return Fail(absl::StrCat("--layer-metrics-sample-rate: must be in (0, 1], got ",
                             engine_options.layer_metrics_sample_rate));

  std::unique_ptr<deltaserve::tokenizer::Tokenizer> tokenizer;
  if (FileExists(dir + "/tokenizer.json")) {
    auto t = deltaserve::tokenizer::Tokenizer::FromFile(dir + "/tokenizer.json");
    if (!t.ok()) return Fail(std::string(t.status().message()), 1);
    tokenizer = *std::move(t);
  }
  absl::StatusOr<deltaserve::engine::GenerationConfig> gen = deltaserve::engine::LoadGenerationConfig(dir);
  if (!gen.ok()) return Fail(std::string(gen.status().message()), 1);

  // Security flags next: their errors, too, come before the slow weight load.
  api::TlsFiles tls;
  tls.cert = absl::GetFlag(FLAGS_tls_cert);
  tls.key = absl::GetFlag(FLAGS_tls_key);
  tls.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  tls.reload_interval_s = absl::GetFlag(FLAGS_tls_reload_interval);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = api::MakeServerCredentials(tls);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  api::CallGateOptions gate_options;
  if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
    absl::StatusOr<std::vector<std::string>> tokens = api::LoadBearerTokens(absl::GetFlag(FLAGS_auth_token_file));
    if (!tokens.ok()) return Fail(std::string(tokens.status().message()));
    gate_options.bearer_tokens = *std::move(tokens);
  }
  gate_options.rate_limit = absl::GetFlag(FLAGS_rate_limit);
  gate_options.rate_burst = absl::GetFlag(FLAGS_rate_burst);
  if (!(gate_options.rate_limit >= 0) || !(gate_options.rate_burst >= 0))
    return Fail(absl::StrCat("--rate-limit and --rate-burst: must be >= 0, got ", gate_options.rate_limit, " and ",
                             gate_options.rate_burst));
  const int64_t max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  if (max_request_bytes < 1024 || max_request_bytes > (int64_t{1} << 30))
    return Fail(absl::StrCat("--max-request-bytes: must be in [1024, 1073741824], got ", max_request_bytes));
  api::CallGate gate(gate_options);
  deltaserve::vision::DecodeLimits decode_limits;
  decode_limits.max_pixels = absl::GetFlag(FLAGS_vision_max_pixels);
  if (decode_limits.max_pixels < 1)
    return Fail(absl::StrCat("--vision-max-pixels: must be >= 1, got ", decode_limits.max_pixels));
  if (absl::GetFlag(FLAGS_vision_max_inflight_pixels) < decode_limits.max_pixels)
    return Fail(absl::StrCat("--vision-max-inflight-pixels: must be at least --vision-max-pixels (",
                             decode_limits.max_pixels, "), got ", absl::GetFlag(FLAGS_vision_max_inflight_pixels)));

  // Metrics first: a taken port fails fast, before the slow weight load.
  auto registry = std::make_shared<prometheus::Registry>();
  auto process_collector = std::make_shared<deltaserve::metrics::ProcessCollector>();
  auto& requests = prometheus::BuildCounter()
                       .Name("deltaserve_requests_total")
                       .Help("Finished gRPC requests by method and status code")
                       .Register(*registry);
  std::unique_ptr<prometheus::Exposer> exposer;
  if (metrics_port != 0) {
    const std::string bind = absl::StrCat(absl::GetFlag(FLAGS_metrics_host), ":", metrics_port);
    try {
      exposer = std::make_unique<prometheus::Exposer>(bind);
    } catch (const std::exception& e) {
      return Fail(absl::StrCat("--metrics-port: cannot listen on ", bind, " (", e.what(), ")"), 1);
    }
    exposer->RegisterCollectable(registry);
    exposer->RegisterCollectable(process_collector);
  }
  std::mutex metrics_mu;
  api::RequestObserver observer = [&](absl::string_view method, grpc::StatusCode code) {
    std::lock_guard<std::mutex> lock(metrics_mu);  // Family::Add is thread-safe; this keeps labels cheap
    requests.Add({{"method", std::string(method)}, {"code", absl::StatusCodeToString(api::ToAbslCode(code))}})
        .Increment();
  };

  // Loading (and every other start-up pass over the weights) runs on a thread that ends with it, so
  // the engine's CPU worker team is the only one left parked (runner/startup_thread.h says why).
  absl::StatusOr<std::unique_ptr<q::Qwen35Model>> model =
      deltaserve::runner::RunOnStartupThread([&] { return q::Qwen35Model::Load(dir, options); });
  if (!model.ok()) return Fail(std::string(model.status().message()), 1);
  deltaserve::metrics::PrometheusEngineMetrics engine_metrics(*registry, name, (*model)->TimedSpans());
  engine_options.metrics = &engine_metrics;
  prometheus::BuildGauge()
      .Name("deltaserve_build_info")
      .Help("What is running: version, model, device, dtype, weight dtype, inverse method, state dtype (always 1)")
      .Register(*registry)
      .Add({{"version", DELTASERVE_VERSION},
            {"model", name},
            {"device", options.device.str()},
            {"dtype", dtype},
            {"weight_dtype", deltaserve::kernels::WeightDtypeName(options.weight_dtype)},
            {"inverse_method", deltaserve::kernels::ResolveTriInverseMethod(options.inverse_method,
                                                                            options.device.is_cuda())},
            {"state_dtype", deltaserve::kernels::StateDtypeName(options.state_dtype)}})
      .Set(1);
  api::ServedModel served;
  served.name = name;
  served.tokenizer = tokenizer.get();
  served.defaults = deltaserve::engine::DefaultSamplingParams(*gen, config->vocab_size);
  if (served.defaults.eos_token_ids.empty())
    served.defaults.eos_token_ids.assign(config->eos_token_ids.begin(), config->eos_token_ids.end());
  served.engine_options = engine_options;
  absl::StatusOr<std::unique_ptr<deltaserve::runner::ModelRunner>> runner =
      deltaserve::runner::RunOnStartupThread(
          [&] { return deltaserve::runner::ModelRunner::Create(*std::move(model), runner_options); });
  if (!runner.ok()) {
    // Bad values are the operator's flags (exit 2, as for other flag errors); the rest is the machine's.
    return Fail(std::string(runner.status().message()),
                runner.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1);
  }
  absl::StatusOr<std::unique_ptr<deltaserve::engine::Engine>> engine =
      deltaserve::engine::Engine::Start(*std::move(runner), tokenizer.get(), engine_options);
  if (!engine.ok()) return Fail(std::string(engine.status().message()), 1);
  served.engine = engine->get();

  // The optional detector, served beside the text model.
  api::ServedModel vision_served;
  std::unique_ptr<deltaserve::metrics::PrometheusVisionMetrics> vision_metrics;
  std::unique_ptr<deltaserve::engine::VisionBatcher> vision;
  const std::string vision_dir = absl::GetFlag(FLAGS_vision_model);
  if (!vision_dir.empty()) {
    deltaserve::models::padre::PadreOptions vo;
    vo.device = options.device;
    absl::StatusOr<std::unique_ptr<deltaserve::models::padre::PadreDetector>> detector =
        deltaserve::runner::RunOnStartupThread(
            [&] { return deltaserve::models::padre::PadreDetector::Load(vision_dir, vo); });
    if (!detector.ok()) {
      (*engine)->Shutdown(absl::ZeroDuration());
      return Fail(absl::StrCat("--vision-model: ", detector.status().message()), 1);
    }
    vision_served.name = absl::GetFlag(FLAGS_vision_model_name).empty() ? Basename(vision_dir)
                                                                        : absl::GetFlag(FLAGS_vision_model_name);
    if (vision_served.name == name) {
      (*engine)->Shutdown(absl::ZeroDuration());
      return Fail("--vision-model-name: must differ from the text model's name \"" + name + "\"");
    }
    vision_metrics = std::make_unique<deltaserve::metrics::PrometheusVisionMetrics>(*registry, vision_served.name,
                                                                                     (*detector)->TimedSpans());
    deltaserve::engine::VisionBatcherOptions bo;
    bo.max_batch = absl::GetFlag(FLAGS_vision_max_batch);
    bo.max_delay = absl::Microseconds(absl::GetFlag(FLAGS_vision_max_delay_ms) * 1000);
    bo.max_queue = absl::GetFlag(FLAGS_vision_max_queue);
    bo.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
    bo.intra_op_threads = engine_options.intra_op_threads;
    bo.layer_metrics = engine_options.layer_metrics;
    bo.layer_metrics_sample_rate = engine_options.layer_metrics_sample_rate;
    absl::StatusOr<std::unique_ptr<deltaserve::engine::VisionBatcher>> batcher =
        deltaserve::engine::VisionBatcher::Start(*std::move(detector), bo, vision_metrics.get());
    if (!batcher.ok()) {
      (*engine)->Shutdown(absl::ZeroDuration());
      // A failed CUDA graph capture names the way around it.
      const bool graphs = bo.cuda_graphs && vo.device.is_cuda();
      return Fail(absl::StrCat("--vision-*: ", batcher.status().message(),
                               graphs ? " (--cuda-graphs=false runs the detector without CUDA graphs)" : ""));
    }
    vision = *std::move(batcher);
    vision_served.vision = vision.get();
    std::fprintf(stderr, "deltaserve: detector \"%s\" (%s, %s mixer, %ld classes, batch %ld%s)\n",
                 vision_served.name.c_str(), vision_dir.c_str(),
                 vision->model().config().mixer == deltaserve::models::padre::Mixer::kPadre ? "padre" : "softmax",
                 static_cast<long>(vision->model().config().num_classes()), static_cast<long>(bo.max_batch),
                 vision->uses_cuda_graphs() ? ", CUDA graphs" : "");
  }

  std::vector<api::ServedModel*> served_models = {&served};
  if (vision) served_models.push_back(&vision_served);
  api::ModelRegistry models(served_models);
  api::TextGenerationService text_service(&models, observer, &gate);
  api::ModelsService models_service(&models, observer, &gate);
  api::VisionService vision_service(&models, observer, decode_limits, &gate,
                                    absl::GetFlag(FLAGS_vision_max_inflight_pixels));

  // A malformed request makes protobuf log a line: bounded, so garbage cannot flood the log.
  api::InstallRateLimitedProtobufLog();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!absl::GetFlag(FLAGS_reflection)) builder.SetOption(api::WithoutReflection());
  int selected_port = 0;
  const std::string address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port must fail, not be shared
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_request_bytes));
  builder.AddListeningPort(address, *credentials, &selected_port);
  builder.RegisterService(&text_service);
  builder.RegisterService(&models_service);
  if (vision) builder.RegisterService(&vision_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || selected_port == 0) {
    (*engine)->Shutdown(absl::ZeroDuration());
    if (vision) vision->Shutdown(absl::ZeroDuration());
    return Fail(absl::StrCat("--port: cannot listen on ", address), 1);
  }
  std::unique_ptr<api::openai::HttpServer> http;
  if (http_port != 0) {
    api::openai::HttpServerOptions ho;
    ho.host = absl::GetFlag(FLAGS_host);
    ho.port = http_port;
    ho.max_request_bytes = max_request_bytes;
    ho.threads = static_cast<int>(std::min<int64_t>(1024, 2 * runner_options.max_seqs + 16));
    auto started = api::openai::HttpServer::Start(&models, &gate, observer, ho);
    if (!started.ok()) {
      (*engine)->Shutdown(absl::ZeroDuration());
      if (vision) vision->Shutdown(absl::ZeroDuration());
      return Fail(std::string(started.status().message()), 1);
    }
    http = *std::move(started);
    std::fprintf(stderr, "deltaserve: OpenAI-compatible HTTP API on %s:%d\n", ho.host.c_str(), http->port());
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health) {
    health->SetServingStatus(name, true);
    if (vision) health->SetServingStatus(vision_served.name, true);
    health->SetServingStatus("", true);
  }

  const q::ModelOptions& mo = served.engine->model().options();
  std::fprintf(
      stderr,
      "deltaserve: serving \"%s\" (%s, %s, %s weights %s on %s, %ld layers, vocab %ld, tokenizer %s, "
      "inverse %s, state %s) on %s:%d; max_model_len %ld, max_num_seqs %ld, max_batched_tokens %ld, prefill_chunk %ld, "
      "max_queue %ld; "
      "metrics %s\n",
      name.c_str(), dir.c_str(), config->architecture.c_str(), dtype.c_str(),
      deltaserve::kernels::WeightDtypeName(mo.weight_dtype), mo.device.str().c_str(),
      static_cast<long>(config->num_hidden_layers), static_cast<long>(config->vocab_size),
      tokenizer ? "yes" : "no",
      deltaserve::kernels::ResolveTriInverseMethod(mo.inverse_method, mo.device.is_cuda()).c_str(),
      deltaserve::kernels::StateDtypeName(mo.state_dtype).c_str(), absl::GetFlag(FLAGS_host).c_str(),
      selected_port, static_cast<long>(runner_options.max_model_len), static_cast<long>(runner_options.max_seqs),
      static_cast<long>(engine_options.max_batched_tokens), static_cast<long>(engine_options.prefill_chunk),
      static_cast<long>(engine_options.max_queue),
      metrics_port ? absl::StrCat("on :", metrics_port, "/metrics").c_str() : "off");

  std::fprintf(stderr, "deltaserve: transport %s; authentication %s; reflection %s; rate limit %s; max request %ld bytes\n",
               !tls.enabled() ? "plaintext" : tls.client_ca.empty() ? "TLS" : "mutual TLS",
               gate_options.bearer_tokens.empty()
                   ? "off"
                   : absl::StrCat(gate_options.bearer_tokens.size(), " bearer token(s)").c_str(),
               absl::GetFlag(FLAGS_reflection) ? "on" : "off",
               gate_options.rate_limit > 0 ? absl::StrCat(gate_options.rate_limit, " calls/s per client").c_str()
                                           : "off",
               static_cast<long>(max_request_bytes));

  // Shutdown: the signal handler only writes a byte; this thread does the work.
  std::thread waiter([&] {
    char c;
    while (::read(g_signal_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    // Refuse first, then say so: whoever reads "shutting down" already gets UNAVAILABLE and ready = false.
    gate.StartDrain();
    served.ready = false;
    vision_served.ready = false;
    std::fprintf(stderr, "deltaserve: shutting down (grace %.1f s)\n", grace_s);
    if (health) {
      health->SetServingStatus(name, false);
      if (vision) health->SetServingStatus(vision_served.name, false);
      health->SetServingStatus("", false);
    }
    served.engine->Shutdown(absl::Seconds(grace_s));
    if (vision) vision->Shutdown(absl::Seconds(grace_s));
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
  server->Wait();
  waiter.join();
  http.reset();  // its requests ended with the engine's shutdown
  (*engine)->Shutdown(absl::ZeroDuration());
  std::fprintf(stderr, "deltaserve: stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> extra = deltaserve::cli::ParseCommandLine(
      argc, argv,
      "Serves a Qwen3.5 checkpoint over gRPC (deltaserve.v1.TextGeneration, Models, health, reflection).\n"
      "  deltaserve --model DIR [--model-name NAME] [--port 50051] [--metrics-port 9090] [engine flags]\n"
      "Flags may be written with dashes or underscores.",
      "server/main.cc");
  if (!extra.empty()) {
    std::fprintf(stderr, "%s: unexpected argument \"%s\" (flags start with --; see --help)\n", argv[0],
                 extra.front().c_str());
    return 2;
  }
  if (::pipe(g_signal_pipe) != 0) return Fail("cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  return Run();
}
