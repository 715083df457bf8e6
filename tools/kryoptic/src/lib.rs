// The export shim of the `kryoptic` crate 1.5.4 (Copyright 2023 Simo Sorce, Apache-2.0),
// with its FIPS-provider entry left out: the three C entry points a PKCS#11 loader looks up.

#![warn(missing_docs)]

//! This is the Kryoptic shared object
//!
//! A cryptographic software token using the PKCS#11 standard API

use kryoptic_lib::fns::general::{fn_get_function_list, fn_get_interface, fn_get_interface_list};
use kryoptic_lib::pkcs11::*;

/// Public export symbol to access [kryoptic_lib::fn_get_function_list]
#[unsafe(no_mangle)]
pub extern "C" fn C_GetFunctionList(fnlist: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    fn_get_function_list(fnlist)
}

/// Public export symbol to access [kryoptic_lib::fn_get_interface]
#[unsafe(no_mangle)]
pub extern "C" fn C_GetInterface(
    interface_name: CK_UTF8CHAR_PTR,
    version: CK_VERSION_PTR,
    interface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    fn_get_interface(interface_name, version, interface, flags)
}

/// Public export symbol to access [kryoptic_lib::fn_get_interface_list]
#[unsafe(no_mangle)]
pub extern "C" fn C_GetInterfaceList(interfaces_list: CK_INTERFACE_PTR, count: CK_ULONG_PTR) -> CK_RV {
    fn_get_interface_list(interfaces_list, count)
}
