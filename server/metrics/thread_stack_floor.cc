// Keeps prometheus-cpp's HTTP exposer (civetweb) working in a process that loads CUDA LibTorch.
// glibc refuses pthread_create (EINVAL) when a thread's stack cannot hold the process's static TLS,
// and libtorch_cuda's dependencies carry ~170 KB of it (libcublasLt alone 94 KB), while Debian's
// civetweb asks for 100 KB stacks: its server fails with "null context when constructing CivetServer".
// Linked into the executable, this definition interposes on the libc one and raises small requests
// to a floor that fits; every other caller is unaffected.
#include <dlfcn.h>
#include <pthread.h>

#include <cstddef>

namespace {
constexpr size_t kStackFloor = size_t{1} << 20;  // 1 MiB: the static TLS with ample room for frames

using SetStackSizeFn = int (*)(pthread_attr_t*, size_t);

SetStackSizeFn RealSetStackSize() {
  static SetStackSizeFn real =
      reinterpret_cast<SetStackSizeFn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real;
}
}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  return RealSetStackSize()(attr, size < kStackFloor ? kStackFloor : size);
}
