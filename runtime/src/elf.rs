//! Minimal ELF64 reading for checking emitted code objects: header fields and symbol names.

/// `e_machine` of AMDGPU code objects.
pub const EM_AMDGPU: u16 = 224;

/// What the checks need from an ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine`.
    pub machine: u16,
    /// `e_flags`.
    pub flags: u32,
    /// `EI_OSABI` (64 = AMDGPU HSA).
    pub os_abi: u8,
    /// Names in `.symtab` and `.dynsym`.
    pub symbols: Vec<String>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parses a little-endian ELF64 file; `None` if it is not one or is truncated.
pub fn parse(b: &[u8]) -> Option<ElfInfo> {
    if b.get(0..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let os_abi = *b.get(7)?;
    let machine = u16_at(b, 18)?;
    let flags = u32_at(b, 48)?;
    let shoff = u64_at(b, 40)? as usize;
    let shentsize = u16_at(b, 58)? as usize;
    let shnum = u16_at(b, 60)? as usize;
    let mut symbols = Vec::new();
    let sec = |i: usize| -> Option<(u32, usize, usize, u32, usize)> {
        let o = shoff + i * shentsize;
        Some((
            u32_at(b, o + 4)?,
            u64_at(b, o + 24)? as usize,
            u64_at(b, o + 32)? as usize,
            u32_at(b, o + 40)?,
            u64_at(b, o + 56)? as usize,
        ))
    };
    for i in 0..shnum {
        let (ty, off, size, link, entsize) = sec(i)?;
        if (ty == 2 || ty == 11) && entsize >= 24 {
            let (_, stroff, strsize, _, _) = sec(link as usize)?;
            let strtab = b.get(stroff..stroff + strsize)?;
            for k in 0..size / entsize {
                let name_off = u32_at(b, off + k * entsize)? as usize;
                if name_off == 0 {
                    continue;
                }
                let end = strtab.get(name_off..)?.iter().position(|c| *c == 0)?;
                symbols
                    .push(String::from_utf8_lossy(&strtab[name_off..name_off + end]).into_owned());
            }
        }
    }
    symbols.sort();
    symbols.dedup();
    Some(ElfInfo {
        machine,
        flags,
        os_abi,
        symbols,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rejects_non_elf() {
        assert!(super::parse(b"not an elf file at all, just text").is_none());
        assert!(super::parse(&[]).is_none());
    }
}
