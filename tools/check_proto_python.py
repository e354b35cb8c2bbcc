#!/usr/bin/env python3
"""Checks that deltaserve's .proto files compile for Python and describe the expected API.

The end-to-end test's independent client is Python grpcio generated from the same files, so they must
compile with grpc_tools.protoc (the protoc bundled with grpcio-tools, newer than Debian's), import, and
show the same services, streaming flags and `optional` presence as the C++ side sees.

Exit codes: 0 passed, 1 failed, 77 skipped (grpcio-tools is not installed in this Python).
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

SKIP = 77

PROTOS = ["deltaserve/v1/text_generation.proto", "deltaserve/v1/models.proto", "deltaserve/v1/vision.proto"]

# service -> {method: (input, output, server_streaming[, client_streaming])}
SERVICES = {
    "deltaserve.v1.TextGeneration": {
        "Generate": ("GenerateRequest", "GenerateResponse", True),
        "Tokenize": ("TokenizeRequest", "TokenizeResponse", False),
        "Detokenize": ("DetokenizeRequest", "DetokenizeResponse", False),
    },
    "deltaserve.v1.Models": {
        "ListModels": ("ListModelsRequest", "ListModelsResponse", False),
        "GetModel": ("GetModelRequest", "ModelInfo", False),
    },
    "deltaserve.v1.Vision": {
        "Detect": ("DetectRequest", "DetectResponse", False),
        "DetectStream": ("DetectRequest", "DetectResponse", True, True),
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", required=True, type=pathlib.Path,
                        help="folder holding deltaserve/v1/*.proto")
    args = parser.parse_args()

    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        print("skipped: grpcio-tools not installed")
        return SKIP

    root = args.proto_root.resolve()
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main(["grpc_tools.protoc", f"-I{root}", f"-I{well_known}", f"--python_out={out}",
                          f"--grpc_python_out={out}", *[str(root / p) for p in PROTOS]])
        if rc != 0:
            print(f"FAIL: grpc_tools.protoc exited with {rc}")
            return 1
        sys.path.insert(0, out)
        tg = importlib.import_module("deltaserve.v1.text_generation_pb2")
        models = importlib.import_module("deltaserve.v1.models_pb2")
        importlib.import_module("deltaserve.v1.text_generation_pb2_grpc")
        importlib.import_module("deltaserve.v1.models_pb2_grpc")
        vision = importlib.import_module("deltaserve.v1.vision_pb2")
        importlib.import_module("deltaserve.v1.vision_pb2_grpc")

        failures = []

        def check(cond, what):
            if not cond:
                failures.append(what)

        def has(message, field):
            try:
                return message.HasField(field)
            except ValueError:  # the field does not track presence at all
                return False

        files = {"deltaserve.v1.TextGeneration": tg.DESCRIPTOR, "deltaserve.v1.Models": models.DESCRIPTOR,
                 "deltaserve.v1.Vision": vision.DESCRIPTOR}
        for service_name, methods in SERVICES.items():
            service = files[service_name].services_by_name[service_name.split(".")[-1]]
            check(service.full_name == service_name, f"{service_name}: full name {service.full_name}")
            check(set(service.methods_by_name) == set(methods),
                  f"{service_name}: methods {sorted(service.methods_by_name)}")
            for name, (inp, outp, streaming, *client) in methods.items():
                m = service.methods_by_name.get(name)
                if m is None:
                    continue
                check(m.input_type.full_name == "deltaserve.v1." + inp, f"{name}: input {m.input_type.full_name}")
                check(m.output_type.full_name == "deltaserve.v1." + outp,
                      f"{name}: output {m.output_type.full_name}")
                # Older protobuf releases lack the streaming attributes; check them where present.
                if hasattr(m, "server_streaming"):
                    check(m.server_streaming == streaming, f"{name}: server_streaming {m.server_streaming}")
                    check(m.client_streaming == bool(client and client[0]), f"{name}: client_streaming")

        # Round trip through the wire with every input form, and "unset" kept apart from zero.
        for kind, fill in [
            ("prompt", lambda r: setattr(r, "prompt", "Hello")),
            ("chat", lambda r: r.chat.messages.add(role="user", content="Hi")),
            ("token_ids", lambda r: r.token_ids.ids.extend([1, 2, 3])),
        ]:
            req = tg.GenerateRequest(model="m", request_id="r")
            fill(req)
            back = tg.GenerateRequest.FromString(req.SerializeToString())
            check(back.WhichOneof("input") == kind, f"input {kind}: got {back.WhichOneof('input')}")
            check(not back.HasField("sampling"), f"input {kind}: sampling set")

        zero = tg.SamplingParams(temperature=0, top_k=0, seed=0, max_tokens=0, logprobs=0)
        back = tg.SamplingParams.FromString(zero.SerializeToString())
        for field in ["temperature", "top_k", "seed", "max_tokens", "logprobs"]:
            check(has(back, field), f"SamplingParams.{field}=0 lost its presence (is it `optional`?)")
        unset = tg.SamplingParams.FromString(tg.SamplingParams().SerializeToString())
        for field in ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "max_tokens",
                      "logprobs"]:
            check(not has(unset, field), f"SamplingParams.{field} present when unset")

        last = tg.GenerateResponse(finish_reason=tg.FINISH_REASON_STOP, stop_string="\n")
        last.usage.prompt_tokens = 3
        back = tg.GenerateResponse.FromString(last.SerializeToString())
        check(back.WhichOneof("stop_reason") == "stop_string", "GenerateResponse.stop_reason")
        check(tg.FinishReason.Name(0) == "FINISH_REASON_UNSPECIFIED", "FinishReason zero value")
        check(models.ModelKind.Name(0) == "MODEL_KIND_UNSPECIFIED", "ModelKind zero value")
        info = models.ModelInfo(name="m", kind=models.MODEL_KIND_TEXT_GENERATION)
        info.default_sampling.temperature = 0.6
        back = models.ModelInfo.FromString(info.SerializeToString())
        check(has(back.default_sampling, "temperature") and not has(back.default_sampling, "top_k"),
              "ModelInfo.default_sampling presence")

    if failures:
        for f in failures:
            print("FAIL:", f)
        return 1
    print(f"ok: {len(PROTOS)} files compiled with grpc_tools.protoc; services and messages as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
