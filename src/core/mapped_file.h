// Read-only memory map of a whole file. Model weights are used in place from
// the map, so loading a model costs page-cache, not heap.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace optiq {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws optiq::Error("<path>: cannot open: <reason>") on failure.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }
  // Tells the kernel the mapped pages are not needed now (they leave the
  // process's RSS; touching them again re-reads the file). For sources whose
  // contents were all converted into other storage.
  void drop_pages() const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// drop_pages for the whole pages inside [p, p + n) of a read-only file mapping
// (partial pages at the ends are kept). Never call it on anonymous memory:
// there MADV_DONTNEED zeroes the data.
void drop_mapped_pages(const void* p, size_t n);

// The whole pages inside [p, p + n) leave the process's resident memory when
// they belong to a MappedFile (MADV_DONTNEED: unmapped from the process; the
// page cache keeps them while memory allows, so touching them again costs a
// minor fault, not a read). Anything else (anonymous memory, which
// MADV_DONTNEED would zero) is left alone, so it is safe on any pointer.
void release_file_pages(const void* p, size_t n);

// Asks the kernel to read the pages of [p, p + n) of a file mapping ahead
// (MADV_WILLNEED); returns at once.
void prefetch_file_pages(const void* p, size_t n);

// Asks for transparent huge pages (2 MB) on the whole huge pages inside
// [p, p + n) of anonymous memory not touched yet (a no-op where THP is off).
// Why: decode streams every weight once per token; with 4 kB pages each new
// page costs a TLB walk and the hardware prefetcher stops at its end.
void advise_huge_pages(const void* p, size_t n);

// Returns free heap pages to the OS (glibc's malloc_trim; a no-op elsewhere).
// Why: a loader frees many small blocks (a GGUF's 262k vocabulary strings)
// that glibc keeps mapped between live ones; without this they stay in RSS.
void return_free_heap();

// v.resize(n) with huge pages advised before the first touch (large arrays).
template <typename Vec>
void resize_huge(Vec& v, size_t n) {
  v.reserve(n);
  advise_huge_pages(v.data(), n * sizeof(typename Vec::value_type));
  v.resize(n);
}

}  // namespace optiq
