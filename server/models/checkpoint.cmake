# deltaserve_checkpoint: reading checkpoints (memory-mapped safetensors) and the Qwen3.5 config.json.
# Included from server/models/CMakeLists.txt; kept free of LibTorch so tools and tests that only inspect
# checkpoints build in seconds.
find_package(nlohmann_json 3 QUIET)

add_library(deltaserve_checkpoint STATIC
  "${CMAKE_CURRENT_LIST_DIR}/safetensors.cc"
  "${CMAKE_CURRENT_LIST_DIR}/qwen35/config.cc")
target_include_directories(deltaserve_checkpoint PUBLIC "${PROJECT_SOURCE_DIR}/server")
target_link_libraries(deltaserve_checkpoint PUBLIC absl::status absl::statusor absl::strings)
if(nlohmann_json_FOUND)
  target_link_libraries(deltaserve_checkpoint PRIVATE nlohmann_json::nlohmann_json)
endif()
