// The AVX-512 BF16 half of conv_wgrad.cpp, for CPUs without AMX (Zen 4 and later): the same A and
// B buffers, multiplied with VDPBF16PS, which adds to each of 16 fp32 lanes the products of one
// pair of bf16 numbers. A lane is an input channel, the pair two images: one B row (an image pair
// x 16 channels x 2) times one A number (an output channel's image pair, broadcast) adds one image
// pair to one row of a 16 x 16 C tile. A microkernel keeps 8 rows of 3 C tiles, 24 of the 32
// vector registers, for a whole band. Included where -march=native defines __AVX512BF16__ but
// not __AMX_BF16__.

constexpr const char* kKind = "AVX-512 BF16";
// Smaller bands than AMX's: on a 2-core Zen 4 (1 MB L2 per core) 256 KB ran 1-11% faster than
// 1 MB at each of conv_wgrad_layers.py's shapes (2026-12-03, one scratch build and run of each).
constexpr int64_t kBandBytes = 256 << 10;

bool kernel_ready() { return true; }
constexpr const char* kNotReady = "";

struct ThreadScope {};

// 3 columns divide every layer's 9 * C/16 columns, 8 rows a tile's 16
constexpr int kRows = 8, kCols = 3;

// Rows [0, kRows) of kCols C tiles (c[j], fp32, rows 64 bytes apart) += sum over `steps` of A x B;
// a points at row 0 of the first step's A tile.
void mkv(float* const* c, const char* a, const char* const* const* b, int64_t a_step, int steps) {
  __m512 acc[kRows][kCols];
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kCols; ++j) acc[r][j] = _mm512_loadu_ps(c[j] + 16 * r);
  for (int s = 0; s < steps; ++s) {
    const char* at = a + s * a_step;
    for (int p = 0; p < 16; ++p) {  // image pairs
      __m512bh bv[kCols];
      for (int j = 0; j < kCols; ++j) bv[j] = (__m512bh)_mm512_load_si512(b[j][s] + 64 * p);
      for (int r = 0; r < kRows; ++r) {
        int32_t pair;  // output channel r's numbers of image pair p, broadcast to every lane
        std::memcpy(&pair, at + 64 * r + 4 * p, sizeof pair);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
        for (int j = 0; j < kCols; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kCols; ++j) _mm512_storeu_ps(c[j] + 16 * r, acc[r][j]);
}

// Every output-channel tile x column of one band, in blocks of kCols columns and kRows rows.
// (band.cols, 9 * C/16, is a multiple of kCols.)
void accumulate(const Band& band) {
  for (int kt = band.kt0; kt < band.kt1; ++kt)
    for (int col = 0; col < band.cols; col += kCols)
      for (int r0 = 0; r0 < 16; r0 += kRows) {
        float* c[kCols];
        const char* const* b[kCols];
        for (int j = 0; j < kCols; ++j) {
          c[j] = band.c(kt, col + j) + 16 * r0;
          b[j] = band.b(col + j);
        }
        mkv(c, band.a_tile(kt) + 64 * r0, b, band.a_step, band.steps);
      }
}
