#include "core/cpu_info.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define SQA_X86 1
#endif

namespace sqa {

namespace {

#ifdef SQA_X86
struct Regs {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

Regs cpuid(uint32_t leaf, uint32_t subleaf) {
  Regs r;
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

bool bit(uint32_t word, int b) {
  return (word >> b) & 1u;
}

std::string trim(std::string s) {
  s.erase(std::find(s.begin(), s.end(), '\0'), s.end());
  const auto first = s.find_first_not_of(' ');
  const auto last = s.find_last_not_of(' ');
  return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
}

CpuInfo detect() {
  CpuInfo info;
  const Regs r0 = cpuid(0, 0);
  char vendor[13] = {};
  std::memcpy(vendor + 0, &r0.ebx, 4);
  std::memcpy(vendor + 4, &r0.edx, 4);
  std::memcpy(vendor + 8, &r0.ecx, 4);
  info.vendor = vendor;

  const Regs ext = cpuid(0x80000000u, 0);
  if (ext.eax >= 0x80000004u) {
    char brand[49] = {};
    for (uint32_t i = 0; i < 3; ++i) {
      const Regs b = cpuid(0x80000002u + i, 0);
      std::memcpy(brand + 16 * i + 0, &b.eax, 4);
      std::memcpy(brand + 16 * i + 4, &b.ebx, 4);
      std::memcpy(brand + 16 * i + 8, &b.ecx, 4);
      std::memcpy(brand + 16 * i + 12, &b.edx, 4);
    }
    info.model = trim(brand);
  }

  const uint32_t max_leaf = r0.eax;
  if (max_leaf < 1) return info;
  const Regs r1 = cpuid(1, 0);
  const bool osxsave = bit(r1.ecx, 27);
  // The OS must enable the register state before AVX / AVX-512 instructions are usable:
  // XCR0 bits 1-2 (SSE, AVX) and 5-7 (opmask, ZMM upper halves, ZMM16-31).
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;

  info.fma = os_avx && bit(r1.ecx, 12);
  if (max_leaf >= 7) {
    const Regs r7 = cpuid(7, 0);
    info.avx2 = os_avx && bit(r7.ebx, 5);
    info.avx512f = os_avx512 && bit(r7.ebx, 16);
    info.avx512dq = os_avx512 && bit(r7.ebx, 17);
    info.avx512bw = os_avx512 && bit(r7.ebx, 30);
    info.avx512vl = os_avx512 && bit(r7.ebx, 31);
    if (r7.eax >= 1) info.avx512_bf16 = os_avx512 && bit(cpuid(7, 1).eax, 5);
  }
  return info;
}
#else
CpuInfo detect() {
  return CpuInfo{"unknown", "", 0};
}
#endif

}  // namespace

std::string CpuInfo::feature_string() const {
  std::string out;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!out.empty()) out += ' ';
    out += name;
  };
  add(fma, "fma");
  add(avx2, "avx2");
  add(avx512f, "avx512f");
  add(avx512bw, "avx512bw");
  add(avx512dq, "avx512dq");
  add(avx512vl, "avx512vl");
  add(avx512_bf16, "avx512_bf16");
  return out.empty() ? "none" : out;
}

const CpuInfo& cpu_info() {
  static const CpuInfo info = [] {
    CpuInfo i = detect();
    if (i.vendor.empty()) i.vendor = "unknown";
    if (i.model.empty()) i.model = "unknown";
    i.logical_cpus = static_cast<int>(std::thread::hardware_concurrency());
    return i;
  }();
  return info;
}

}  // namespace sqa
