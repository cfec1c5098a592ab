//! The world's side of raw uAPI lines ([`crate::raw`]): files opened by `uapi_open`, ioctls
//! with byte-level arguments through the `Vfio` table.

use super::*;

impl World {
    pub(super) fn raw_open(&mut self, name: &str, group: Option<u32>) -> Result<(), StepError> {
        let r = &mut self.raw;
        if r.files.contains_key(name) {
            return usage(format!("file {name:?} is already open"));
        }
        let obj = match group {
            None => self.vfio.open_container(),
            Some(g) => self
                .vfio
                .open_group(g)
                .map_err(|e| errno(e, format!("open /dev/vfio/{g}")))?,
        };
        let fd = type1_uapi::Caller::new_fd(&mut r.caller, obj)
            .map_err(|e| errno(e, "no fd".to_string()))?;
        r.files.insert(name.to_string(), fd);
        Ok(())
    }

    pub(super) fn raw_ioctl(
        &mut self,
        file: &str,
        request: u64,
        arg: &Arg,
        bind: Option<&str>,
    ) -> Result<(), StepError> {
        let r = &mut self.raw;
        let Some(&fd) = r.files.get(file) else {
            return usage(format!("no open file named {file:?}"));
        };
        let Some(obj) = r.caller.object(fd) else {
            return usage(format!("{file:?} is not an emulated file"));
        };
        let a = match arg {
            Arg::None => 0,
            Arg::Int(v) | Arg::At(v) => *v,
            Arg::Buf(items) => r.build(items).map_err(StepError::Usage)?,
        };
        let name = type1_uapi::nr::name_of(request)
            .map_or_else(|| format!("0x{request:x}"), str::to_string);
        let ret = self
            .vfio
            .ioctl(obj, request, a, &mut r.caller)
            .map_err(|e| errno(e, format!("{name} on {file}")))?;
        r.last_ret = ret;
        if let Some(b) = bind {
            let fd = i32::try_from(ret).map_err(|_| {
                StepError::Usage(format!("{name} returned {ret}, not an fd to name {b:?}"))
            })?;
            r.files.insert(b.to_string(), fd);
        }
        Ok(())
    }

    /// Executes an operation on raw uAPI lines (`crate::raw`).
    pub(super) fn exec_raw(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::RawOpen { name, group } => self.raw_open(name, *group),
            Op::RawClose(name) => {
                let Some(fd) = self.raw.files.remove(name) else {
                    return usage(format!("no open file named {name:?}"));
                };
                if let Some(obj) = self.raw.caller.forget(fd) {
                    self.vfio.close(obj);
                }
                Ok(())
            }
            Op::RawIoctl {
                file,
                request,
                arg,
                bind,
            } => self.raw_ioctl(file, *request, arg, bind.as_deref()),
            other => usage(format!("internal: {other:?} is not for exec_raw")),
        }
    }
}
