#pragma once
// Fake CUDA runtime for the emulator: one device, synchronous everything, host memory.
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <set>
#include <vector>

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorNotReady = 600,
                   cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
#define cudaStreamNonBlocking 1
#define cudaEventDisableTiming 2
#define cudaHostAllocPortable 1
struct cudaDeviceProp {
  char name[256];
  std::size_t totalGlobalMem;
  std::size_t sharedMemPerBlockOptin;
  int multiProcessorCount, major, minor;
};
namespace emu_rt {
inline int& last() { static int e = 0; return e; }
inline long& mallocs() { static long n = 0; return n; }
inline std::set<void*>& live() { static std::set<void*> s; return s; }
// A test may hold the stream (hold() = true): then cudaMemcpyAsync calls wait in a queue and
// events recorded meanwhile report cudaErrorNotReady, until a synchronizing call runs the queue
// in order (kernels still run at once: hold only around copies). Shows what reads a host buffer
// after the call that enqueued the copy has returned.
struct QueuedCopy { void* d; const void* s; std::size_t n; };
inline bool& hold() { static bool h = false; return h; }
inline std::vector<QueuedCopy>& queued() { static std::vector<QueuedCopy> q; return q; }
inline std::set<void*>& pending_events() { static std::set<void*> s; return s; }
inline void drain() {
  for (const QueuedCopy& c : queued()) std::memmove(c.d, c.s, c.n);
  queued().clear();
  pending_events().clear();
}
}
inline int& emu_launch_error_ref() { static int v = 0; return v; }
inline cudaError_t cudaGetLastError() {
  int e = emu_launch_error_ref();
  emu_launch_error_ref() = 0;
  return e ? cudaErrorInvalidValue : cudaSuccess;
}
inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmu"; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetDeviceCount(int* n) {
  if (std::getenv("EMU_NO_GPU")) { *n = 0; return cudaErrorNoDevice; }
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::strcpy(p->name, "EMU");
  p->totalGlobalMem = std::size_t{8} << 30;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->multiProcessorCount = 4;
  p->major = 9; p->minor = 0;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = reinterpret_cast<cudaStream_t>(0x1); return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { emu_rt::drain(); return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, std::size_t n) {
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
  // Poison fresh device memory so reads of unwritten memory show up as NaN-ish garbage.
  std::memset(*p, 0xff, n);
  emu_rt::mallocs()++;
  emu_rt::live().insert(*p);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) { emu_rt::live().erase(p); std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemGetInfo(std::size_t* f, std::size_t* t) { *f = 1; *t = 2; return cudaSuccess; }
inline cudaError_t cudaHostAlloc(void** p, std::size_t n, unsigned) { *p = std::malloc(n); return cudaSuccess; }
inline cudaError_t cudaFreeHost(void* p) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { *e = reinterpret_cast<cudaEvent_t>(new int(0)); return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { if (emu_rt::hold()) emu_rt::pending_events().insert(e); return cudaSuccess; }
inline cudaError_t cudaEventQuery(cudaEvent_t e) { return emu_rt::pending_events().count(e) ? cudaErrorNotReady : cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { emu_rt::drain(); return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { emu_rt::pending_events().erase(e); delete reinterpret_cast<int*>(e); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, std::size_t n, cudaMemcpyKind, cudaStream_t) {
  if (emu_rt::hold()) emu_rt::queued().push_back({d, s, n});
  else std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, std::size_t n, cudaStream_t = nullptr) { std::memset(d, v, n); return cudaSuccess; }
template <class K>
inline cudaError_t cudaFuncSetAttribute(K, cudaFuncAttribute, int) { return cudaSuccess; }
struct cudaFuncAttributes {
  std::size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion;
};
// The emulated kernels count as sm_90 code; EMU_SM=75 (say) pretends an older build.
template <class K>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, K) {
  *a = {};
  a->maxThreadsPerBlock = 1024;
  a->ptxVersion = a->binaryVersion = std::getenv("EMU_SM") ? std::atoi(std::getenv("EMU_SM")) : 90;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
