//! The macro that turns a list of C signatures into exported wrappers: look up
//! the real function once, ask [`crate::fault::decide`], then fail, delay or
//! forward. One place, so every wrapper behaves the same.

/// `interpose! { api = Cuda, fns = CudaFns, get = cuda_fns, no_library = 100,
/// no_symbol = 500, ret = CUresult; fn cuInit(flags: c_uint) => Other, None; ... }`
///
/// For each `fn`: a field in `$fns` holding the real pointer, and an exported
/// `#[no_mangle]` wrapper. The expression after the class names the device
/// ordinal the call acts on (`Option<i64>`); it may use the arguments and is
/// evaluated only while a fault selects some devices.
macro_rules! interpose {
    (
        api = $api:ident, fns = $fns:ident, get = $get:ident,
        no_library = $nolib:expr, no_symbol = $nosym:expr, ret = $ret:ty;
        $( fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) => $class:ident, $dev:expr ; )*
    ) => {
        /// Real function pointers, resolved once from the real library.
        #[allow(non_snake_case)]
        #[derive(Debug)]
        pub(crate) struct $fns {
            $( pub(crate) $name: Option<unsafe extern "C" fn($($ty),*) -> $ret>, )*
        }

        impl $fns {
            pub(crate) fn load(lib: &$crate::real::Library) -> $fns {
                $fns {
                    $( $name: {
                        let p = lib.sym(const {
                            match std::ffi::CStr::from_bytes_with_nul(
                                concat!(stringify!($name), "\0").as_bytes(),
                            ) {
                                Ok(c) => c,
                                Err(_) => panic!("symbol name with NUL"),
                            }
                        });
                        // SAFETY: `p` is null or the address of the real library's
                        // function of this name, whose C signature is the one
                        // declared here (from cuda.h / nvml.h); a null pointer
                        // becomes `None`.
                        unsafe {
                            std::mem::transmute::<
                                *mut std::ffi::c_void,
                                Option<unsafe extern "C" fn($($ty),*) -> $ret>,
                            >(p)
                        }
                    }, )*
                }
            }

            /// The shim's wrapper for a real function pointer it wraps.
            #[allow(dead_code)]
            pub(crate) fn ours_for_real(
                &self,
                real: *mut std::ffi::c_void,
            ) -> Option<*mut std::ffi::c_void> {
                $(
                    if let Some(f) = self.$name {
                        if f as *mut std::ffi::c_void == real {
                            return Some($name as unsafe extern "C" fn($($ty),*) -> $ret
                                as *mut std::ffi::c_void);
                        }
                    }
                )*
                None
            }

            /// The shim's wrapper exported under `name`.
            #[allow(dead_code)]
            pub(crate) fn ours_by_name(name: &[u8]) -> Option<*mut std::ffi::c_void> {
                $(
                    if name == stringify!($name).as_bytes() {
                        return Some($name as unsafe extern "C" fn($($ty),*) -> $ret
                            as *mut std::ffi::c_void);
                    }
                )*
                None
            }

            /// Every symbol this table wraps.
            #[allow(dead_code)]
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];
        }

        $(
            /// Interposed: fails or delays while a fault is active, else forwards.
            ///
            /// # Safety
            /// The contract of the driver function of the same name.
            #[unsafe(no_mangle)]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                let Some(fns) = $get() else { return $nolib };
                let Some(real) = fns.$name else { return $nosym };
                match $crate::fault::decide(
                    $crate::fault::Api::$api,
                    $crate::fault::Class::$class,
                    || $dev,
                ) {
                    $crate::fault::Verdict::Pass => {}
                    $crate::fault::Verdict::Fail(code) => return code,
                    $crate::fault::Verdict::Delay(d) => std::thread::sleep(d),
                }
                // SAFETY: the caller's arguments, unchanged, to the real function
                // with the same signature; the caller upholds its contract.
                unsafe { real($($arg),*) }
            }
        )*
    };
}

pub(crate) use interpose;
