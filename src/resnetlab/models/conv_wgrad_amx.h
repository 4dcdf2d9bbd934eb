// The AMX half of conv_wgrad.cpp: tile products C[16 k][16 c] += A x B on the tile registers,
// where A is 16 output channels x 32 images (bf16) and B 16 image pairs x 16 input channels x 2
// (the pair-interleaved "VNNI" layout TDPBF16PS reads its second operand in). C stays in tile
// registers for a whole band. Included on CPUs with amx_bf16 only (-march=native defines
// __AMX_BF16__ there).

constexpr const char* kKind = "AMX";
constexpr int64_t kBandBytes = 1 << 20;  // A + B buffers of one band: about half of a 2 MB L2

struct TileConfig {  // the 64-byte operand of LDTILECFG, palette 1
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool request_amx() {  // Linux hands a process the tile registers only when it asks (once)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return ok;
}

bool kernel_ready() { return request_amx(); }
constexpr const char* kNotReady = "the kernel did not get AMX tile registers from the OS";

struct ThreadScope {  // per thread: all eight tiles 16 x 64 bytes while it computes, released after
  ThreadScope() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
      cfg.colsb[t] = 64;
      cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
  }
  ~ThreadScope() { _tile_release(); }
};

// The microkernels: C tiles (fp32, rows 64 bytes apart) += sum over `steps` of A x B, for MR
// output-channel tiles x NR columns (a column = one tap and 16 input channels). Tile numbers
// are immediates, hence one function per shape: 2x2 (8 tiles), 1x3 (7) and 1x1.
void mk22(float* c00, float* c01, float* c10, float* c11, const char* a0, const char* a1,
          const char* const* b0, const char* const* b1, int64_t a_step, int steps) {
  _tile_loadd(0, c00, 64); _tile_loadd(1, c01, 64); _tile_loadd(2, c10, 64); _tile_loadd(3, c11, 64);
  for (int s = 0; s < steps; ++s) {
    _tile_loadd(4, a0 + s * a_step, 64);
    _tile_loadd(6, b0[s], 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1[s], 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + s * a_step, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c00, 64); _tile_stored(1, c01, 64); _tile_stored(2, c10, 64); _tile_stored(3, c11, 64);
}

void mk13(float* c0, float* c1, float* c2, const char* a0, const char* const* b0, const char* const* b1,
          const char* const* b2, int64_t a_step, int steps) {
  _tile_loadd(0, c0, 64); _tile_loadd(1, c1, 64); _tile_loadd(2, c2, 64);
  for (int s = 0; s < steps; ++s) {
    _tile_loadd(3, a0 + s * a_step, 64);
    _tile_loadd(4, b0[s], 64);
    _tile_dpbf16ps(0, 3, 4);
    _tile_loadd(5, b1[s], 64);
    _tile_dpbf16ps(1, 3, 5);
    _tile_loadd(6, b2[s], 64);
    _tile_dpbf16ps(2, 3, 6);
  }
  _tile_stored(0, c0, 64); _tile_stored(1, c1, 64); _tile_stored(2, c2, 64);
}

void mk11(float* c0, const char* a0, const char* const* b0, int64_t a_step, int steps) {
  _tile_loadd(0, c0, 64);
  for (int s = 0; s < steps; ++s) {
    _tile_loadd(1, a0 + s * a_step, 64);
    _tile_loadd(2, b0[s], 64);
    _tile_dpbf16ps(0, 1, 2);
  }
  _tile_stored(0, c0, 64);
}

// Every output-channel tile x column of one band: 2x2 blocks, then what is left over.
void accumulate(const Band& band) {
  int kt = band.kt0;
  for (; kt + 1 < band.kt1; kt += 2) {
    int col = 0;
    for (; col + 1 < band.cols; col += 2)
      mk22(band.c(kt, col), band.c(kt, col + 1), band.c(kt + 1, col), band.c(kt + 1, col + 1), band.a_tile(kt),
           band.a_tile(kt + 1), band.b(col), band.b(col + 1), band.a_step, band.steps);
    for (; col < band.cols; ++col) {
      mk11(band.c(kt, col), band.a_tile(kt), band.b(col), band.a_step, band.steps);
      mk11(band.c(kt + 1, col), band.a_tile(kt + 1), band.b(col), band.a_step, band.steps);
    }
  }
  for (; kt < band.kt1; ++kt) {
    int col = 0;
    for (; col + 2 < band.cols; col += 3)
      mk13(band.c(kt, col), band.c(kt, col + 1), band.c(kt, col + 2), band.a_tile(kt), band.b(col), band.b(col + 1),
           band.b(col + 2), band.a_step, band.steps);
    for (; col < band.cols; ++col) mk11(band.c(kt, col), band.a_tile(kt), band.b(col), band.a_step, band.steps);
  }
}
