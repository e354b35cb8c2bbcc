# The fuzzing and sanitizer build (-DDELTASERVE_FUZZ=ON, clang): only the torch-free parsers that read
# bytes from outside (tokenizer, chat format, safetensors, config.json, image codecs), their libFuzzer
# harnesses in tests/fuzz and their unit tests (tests/tokenizer, tests/checkpoint, tests/vision), all built
# with AddressSanitizer and UBSan (and coverage instrumentation for the fuzzer). scripts/fuzz.sh configures,
# builds and runs the harnesses; `ctest` in that build folder runs the sanitized unit tests.
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "DELTASERVE_FUZZ needs clang (libFuzzer): -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang")
endif()
find_package(absl REQUIRED)
find_package(GTest REQUIRED)
set(DELTASERVE_PYTHON "" CACHE FILEPATH "Python for the unit tests' fixtures (transformers, tokenizers)")
enable_testing()
include(GoogleTest)
add_compile_options(-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined
  -fno-omit-frame-pointer -g -O1)
add_link_options(-fsanitize=address,undefined)
add_subdirectory(server/tokenizer)
add_subdirectory(server/vision)
include(server/models/checkpoint.cmake)
add_subdirectory(tests/fuzz)
add_subdirectory(tests/tokenizer)
add_subdirectory(tests/checkpoint)
add_subdirectory(tests/vision)
