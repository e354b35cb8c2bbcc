// The translation unit that builds the precompiled header (ATen and gtest) every LibTorch-linked test
// binary reuses (target deltaserve_test_pch in tests/CMakeLists.txt): one PCH build instead of nine.
