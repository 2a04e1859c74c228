//! [`DataBuffer`]: the data buffers of one request, as a list of segments.

/// The data buffers of one request.
///
/// For host-to-controller commands (Write, Connect, Set Features with data)
/// the transport has already placed the host's data in the segments; for
/// controller-to-host commands (Read, Identify, Get Log Page) the controller
/// fills them and the transport then moves the bytes to the host. The
/// segments are in transfer order; their total length is the request's data
/// length (the SGL length the host sent).
#[derive(Debug)]
pub struct DataBuffer<'a> {
    segments: Segments<'a>,
}

#[derive(Debug)]
enum Segments<'a> {
    None,
    ReadOnly(&'a [u8]),
    One(&'a mut [u8]),
    Many(&'a mut [&'a mut [u8]]),
}

impl<'a> DataBuffer<'a> {
    /// A request without data.
    pub fn none() -> DataBuffer<'a> {
        DataBuffer {
            segments: Segments::None,
        }
    }

    /// A request whose data is one contiguous buffer.
    pub fn single(buf: &'a mut [u8]) -> DataBuffer<'a> {
        DataBuffer {
            segments: Segments::One(buf),
        }
    }

    /// Host-to-controller data the target may only read, e.g. in-capsule
    /// data still in the transport's receive buffer. Commands that return
    /// data see it as zero bytes long and fail with "Data SGL Length
    /// Invalid".
    pub fn read_only(buf: &'a [u8]) -> DataBuffer<'a> {
        DataBuffer {
            segments: Segments::ReadOnly(buf),
        }
    }

    /// A request whose data is spread over several buffers, in order.
    pub fn segments(segments: &'a mut [&'a mut [u8]]) -> DataBuffer<'a> {
        DataBuffer {
            segments: Segments::Many(segments),
        }
    }

    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let (single, many): (Option<&[u8]>, &[&'a mut [u8]]) = match &self.segments {
            Segments::None => (None, &[]),
            Segments::ReadOnly(b) => (Some(b), &[]),
            Segments::One(b) => (Some(b), &[]),
            Segments::Many(s) => (None, s),
        };
        single.into_iter().chain(many.iter().map(|s| &s[..]))
    }

    fn parts_mut(&mut self) -> &mut [&'a mut [u8]] {
        match &mut self.segments {
            Segments::None | Segments::ReadOnly(_) => &mut [],
            Segments::One(b) => std::slice::from_mut(b),
            Segments::Many(s) => s,
        }
    }

    /// Total bytes over all segments.
    pub fn len(&self) -> usize {
        self.parts().map(<[u8]>::len).sum()
    }

    /// Bytes the target may write (0 for [`DataBuffer::read_only`]).
    pub fn writable_len(&self) -> usize {
        match &self.segments {
            Segments::ReadOnly(_) => 0,
            _ => self.len(),
        }
    }

    /// Whether there is no data at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies bytes starting at `offset` of the request data into `dst`;
    /// returns how many were copied (less than `dst.len()` at the end).
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        let mut skip = offset;
        let mut done = 0;
        for seg in self.parts() {
            if done == dst.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let src = &seg[skip..];
            skip = 0;
            let n = src.len().min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&src[..n]);
            done += n;
        }
        done
    }

    /// Copies `src` into the request data starting at `offset`; returns how
    /// many bytes were copied (less than `src.len()` at the end).
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> usize {
        let mut skip = offset;
        let mut done = 0;
        for seg in self.parts_mut() {
            if done == src.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let dst = &mut seg[skip..];
            skip = 0;
            let n = dst.len().min(src.len() - done);
            dst[..n].copy_from_slice(&src[done..done + n]);
            done += n;
        }
        done
    }

    /// Sets `len` bytes starting at `offset` to zero; returns how many were set.
    pub fn zero_at(&mut self, offset: usize, len: usize) -> usize {
        let mut skip = offset;
        let mut done = 0;
        for seg in self.parts_mut() {
            if done == len {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let dst = &mut seg[skip..];
            skip = 0;
            let n = dst.len().min(len - done);
            dst[..n].fill(0);
            done += n;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_gather_across_segments() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 0];
        let mut c = [0u8; 5];
        let mut segs: [&mut [u8]; 3] = [&mut a, &mut b, &mut c];
        let mut d = DataBuffer::segments(&mut segs);
        assert_eq!(d.len(), 8);
        assert_eq!(d.write_at(1, &[1, 2, 3, 4, 5, 6, 7, 8]), 7);
        let mut out = [0xffu8; 8];
        assert_eq!(d.read_at(0, &mut out), 8);
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(d.zero_at(2, 3), 3);
        assert_eq!(d.read_at(0, &mut out), 8);
        assert_eq!(out, [0, 1, 0, 0, 0, 5, 6, 7]);
        let mut tail = [0u8; 4];
        assert_eq!(d.read_at(6, &mut tail), 2);
        assert_eq!(d.read_at(9, &mut tail), 0);
    }

    #[test]
    fn read_only_is_not_writable() {
        let src = [1u8, 2, 3];
        let mut d = DataBuffer::read_only(&src);
        assert_eq!((d.len(), d.writable_len()), (3, 0));
        assert_eq!(d.write_at(0, &[9]), 0);
        assert_eq!(d.zero_at(0, 3), 0);
        let mut out = [0u8; 3];
        assert_eq!(d.read_at(0, &mut out), 3);
        assert_eq!(out, src);
    }

    #[test]
    fn none_and_single() {
        let mut d = DataBuffer::none();
        assert!(d.is_empty());
        assert_eq!(d.write_at(0, &[1]), 0);
        let mut buf = [0u8; 4];
        {
            let mut d = DataBuffer::single(&mut buf);
            assert_eq!(d.write_at(2, &[9, 9, 9]), 2);
        }
        assert_eq!(buf, [0, 0, 9, 9]);
    }
}
