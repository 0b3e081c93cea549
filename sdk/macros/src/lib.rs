//! The attribute macros of `flumen-sdk`: each turns a plain function into a flumen operator (an
//! `Operator` impl on a struct named after the function, plus the module's exports). See the
//! `flumen-sdk` documentation for what a function may take and return.
//!
//! An input type may borrow from the record (`Order<'a>`): its `'_`, elided reference lifetimes
//! and the function's lifetime parameters become the `'a` of `Operator::Input<'a>`, and `'static`
//! in the output and side output types the host compares.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::visit_mut::VisitMut;
use syn::{
    FnArg, GenericArgument, Ident, ItemFn, Lifetime, PathArguments, ReturnType, Token, Type,
    TypeParamBound,
};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Map,
    Filter,
    FilterMap,
    FlatMap,
    Process,
}

impl Kind {
    fn variant(self) -> Ident {
        let name = match self {
            Kind::Map => "Map",
            Kind::Filter => "Filter",
            Kind::FilterMap => "FilterMap",
            Kind::FlatMap => "FlatMap",
            Kind::Process => "Process",
        };
        Ident::new(name, Span::call_site())
    }
}

/// A map: one output per input. `fn f(input: I, ...) -> O` or `-> Result<O, E>`.
#[proc_macro_attribute]
pub fn map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Map, attr, item)
}

/// A filter: the input, or nothing. `fn f(input: &I, ...) -> bool` or `-> Result<bool, E>`.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Filter, attr, item)
}

/// A filter-map: one output or none. `fn f(input: I, ...) -> Option<O>` or
/// `-> Result<Option<O>, E>`.
#[proc_macro_attribute]
pub fn filter_map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::FilterMap, attr, item)
}

/// A flat-map: any number of outputs. `fn f(input: I, ...) -> Vec<O>` (or `Option<O>`, or
/// `impl IntoIterator<Item = O>`), optionally inside `Result<_, E>`.
#[proc_macro_attribute]
pub fn flat_map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::FlatMap, attr, item)
}

/// A keyed process: `fn f(input: I, state: &mut ValueState<S>, ...) -> R` where `R` is
/// `Option<O>` (one output or none), `Vec<O>` or `impl IntoIterator<Item = O>` (any number), or
/// `O` (exactly one), optionally inside `Result<_, E>`. The state handle is the state of the
/// record's key (`key_by` of the stage); `MapState<K, V>` works too.
#[proc_macro_attribute]
pub fn process(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Process, attr, item)
}

/// A window aggregate: put on an `impl flumen_sdk::aggregate::Aggregate for T` block; exports `T`
/// as the module's aggregate.
#[proc_macro_attribute]
pub fn aggregate(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = TokenStream2::from(attr);
        return syn::Error::new_spanned(attr, "aggregate takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut block = syn::parse_macro_input!(item as syn::ItemImpl);
    let output = block.items.iter().find_map(|item| match item {
        syn::ImplItem::Type(t) if t.ident == "Output" => Some(t.ty.clone()),
        _ => None,
    });
    if let Some(output) = output {
        let shape = output_shape(&output);
        block.items.push(syn::parse_quote! {
            fn output_shape() -> ::core::option::Option<::flumen_sdk::abi::Shape> {
                #shape
            }
        });
    }
    let self_ty = &block.self_ty;
    quote!(
        #block
        ::flumen_sdk::export_aggregate!(#self_ty);
    )
    .into()
}

/// `side(name = Type, ...)`
struct Attr {
    sides: Vec<(Ident, Type)>,
}

struct SideDecl {
    name: Ident,
    ty: Type,
}

impl Parse for SideDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = input.parse()?;
        input.parse::<Token![=]>()?;
        let ty = input.parse()?;
        Ok(SideDecl { name, ty })
    }
}

impl Parse for Attr {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut sides = Vec::new();
        while !input.is_empty() {
            let word: Ident = input.parse()?;
            if word != "side" {
                return Err(syn::Error::new(
                    word.span(),
                    "expected `side(name = Type, ...)`",
                ));
            }
            let content;
            syn::parenthesized!(content in input);
            let decls = Punctuated::<SideDecl, Token![,]>::parse_terminated(&content)?;
            sides.extend(decls.into_iter().map(|d| (d.name, d.ty)));
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(Attr { sides })
    }
}

fn expand(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = syn::parse_macro_input!(attr as Attr);
    let func = syn::parse_macro_input!(item as ItemFn);
    match generate(kind, attr, func) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

enum Arg {
    Outputs,
    Params,
    State,
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    }
}

/// The single generic argument of `Name<T, ...>` if `ty` is a path ending in one of `names`.
fn generic_arg<'a>(ty: &'a Type, names: &[&str]) -> Option<&'a Type> {
    let segment = last_segment(ty)?;
    if !names.iter().any(|n| segment.ident == n) {
        return None;
    }
    match &segment.arguments {
        PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

fn iterator_item(ty: &Type) -> Option<&Type> {
    if let Some(t) = generic_arg(ty, &["Vec", "Option", "VecDeque"]) {
        return Some(t);
    }
    let Type::ImplTrait(imp) = ty else {
        return None;
    };
    imp.bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(tr) = bound else {
            return None;
        };
        let segment = tr.path.segments.last()?;
        let PathArguments::AngleBracketed(args) = &segment.arguments else {
            return None;
        };
        args.args.iter().find_map(|a| match a {
            GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(&assoc.ty),
            _ => None,
        })
    })
}

/// Rewrites the lifetimes of a type from the function's signature for a place outside it: `'_`,
/// an elided reference lifetime and the function's own lifetime parameters become `to` (`'a` for
/// the input, which borrows from the record's bytes; `'static` for the types the host compares).
struct Relifetime<'f> {
    from: &'f [Lifetime],
    to: Lifetime,
}

impl VisitMut for Relifetime<'_> {
    fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
        if lifetime.ident == "_" || self.from.iter().any(|l| l.ident == lifetime.ident) {
            *lifetime = self.to.clone();
        }
    }

    fn visit_type_reference_mut(&mut self, reference: &mut syn::TypeReference) {
        if reference.lifetime.is_none() {
            reference.lifetime = Some(self.to.clone());
        }
        syn::visit_mut::visit_type_reference_mut(self, reference);
    }
}

fn relifetime(ty: &Type, from: &[Lifetime], to: &str) -> Type {
    let mut ty = ty.clone();
    Relifetime {
        from,
        to: Lifetime::new(to, Span::call_site()),
    }
    .visit_type_mut(&mut ty);
    ty
}

fn generate(kind: Kind, attr: Attr, func: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    let fn_name = &sig.ident;
    let struct_name = format_ident!("{}Operator", to_camel_case(&fn_name.to_string()));
    let vis = &func.vis;

    let mut inputs = sig.inputs.iter();
    let first = inputs.next().ok_or_else(|| {
        syn::Error::new_spanned(
            sig,
            "an operator function takes its input as first argument",
        )
    })?;
    let FnArg::Typed(first) = first else {
        return Err(syn::Error::new_spanned(
            first,
            "an operator is a free function",
        ));
    };
    let (input_ty, input_by_ref) = match &*first.ty {
        Type::Reference(r) => ((*r.elem).clone(), true),
        other => (other.clone(), false),
    };
    if kind == Kind::Filter && !input_by_ref {
        return Err(syn::Error::new_spanned(
            &first.ty,
            "a filter takes its input by reference (`&T`), as it passes the input on",
        ));
    }

    let mut args = Vec::new();
    let mut params_ty = None;
    let mut state_ty: Option<Type> = None;
    for arg in inputs {
        let FnArg::Typed(arg) = arg else {
            return Err(syn::Error::new_spanned(
                arg,
                "an operator is a free function",
            ));
        };
        let Type::Reference(reference) = &*arg.ty else {
            return Err(syn::Error::new_spanned(
                &arg.ty,
                "after the input, an operator takes `&mut Outputs`, `&Params` or (a process) `&mut State`",
            ));
        };
        let is_outputs = last_segment(&reference.elem).is_some_and(|s| s.ident == "Outputs");
        if is_outputs {
            if reference.mutability.is_none() {
                return Err(syn::Error::new_spanned(
                    &arg.ty,
                    "take outputs as `&mut Outputs`",
                ));
            }
            args.push(Arg::Outputs);
        } else if reference.mutability.is_some() {
            if kind != Kind::Process {
                return Err(syn::Error::new_spanned(
                    &arg.ty,
                    "only a `process` operator takes keyed state (`&mut ValueState<T>`)",
                ));
            }
            if state_ty.is_some() {
                return Err(syn::Error::new_spanned(&arg.ty, "only one state argument"));
            }
            state_ty = Some((*reference.elem).clone());
            args.push(Arg::State);
        } else {
            if params_ty.is_some() {
                return Err(syn::Error::new_spanned(
                    &arg.ty,
                    "only one parameters argument",
                ));
            }
            params_ty = Some((*reference.elem).clone());
            args.push(Arg::Params);
        }
    }

    let ReturnType::Type(_, ret) = &sig.output else {
        return Err(syn::Error::new_spanned(
            sig,
            "an operator function returns its output",
        ));
    };
    let (value_ty, fallible) = match generic_arg(ret, &["Result"]) {
        Some(ok) => (ok.clone(), true),
        None => ((**ret).clone(), false),
    };
    let output_ty: Type = match kind {
        Kind::Map => value_ty.clone(),
        Kind::Filter => input_ty.clone(),
        Kind::FilterMap => generic_arg(&value_ty, &["Option"])
            .cloned()
            .ok_or_else(|| {
                syn::Error::new_spanned(&value_ty, "a filter_map returns `Option<T>`")
            })?,
        Kind::FlatMap => iterator_item(&value_ty).cloned().ok_or_else(|| {
            syn::Error::new_spanned(
                &value_ty,
                "a flat_map returns `Vec<T>`, `Option<T>` or `impl IntoIterator<Item = T>`",
            )
        })?,
        Kind::Process => iterator_item(&value_ty)
            .cloned()
            .unwrap_or_else(|| value_ty.clone()),
    };
    let process_emits_many = kind == Kind::Process && iterator_item(&value_ty).is_some();
    let process_emits_option =
        kind == Kind::Process && generic_arg(&value_ty, &["Option"]).is_some();

    let call_input = if input_by_ref {
        quote!(&input)
    } else {
        quote!(input)
    };
    let call_args = args.iter().map(|a| match a {
        Arg::Outputs => quote!(out),
        Arg::Params => quote!(&self.params),
        Arg::State => quote!(state),
    });
    let call = quote!(#fn_name(#call_input, #(#call_args),*));
    let call = if fallible {
        quote!(match #call {
            ::core::result::Result::Ok(value) => value,
            ::core::result::Result::Err(e) => return ::core::result::Result::Err(e.to_string()),
        })
    } else {
        call
    };
    let emit = match kind {
        Kind::Map => quote!(out.emit_main(&result);),
        Kind::Filter => quote!(if result {
            out.emit_main(&input);
        }),
        Kind::FilterMap => quote!(if let ::core::option::Option::Some(v) = result {
            out.emit_main(&v);
        }),
        Kind::FlatMap => quote!(for v in result {
            out.emit_main(&v);
        }),
        Kind::Process if process_emits_option => {
            quote!(if let ::core::option::Option::Some(v) = result {
                out.emit_main(&v);
            })
        }
        Kind::Process if process_emits_many => quote!(for v in result {
            out.emit_main(&v);
        }),
        Kind::Process => quote!(out.emit_main(&result);),
    };
    let state_ty = state_ty.unwrap_or_else(|| syn::parse_quote!(::flumen_sdk::state::NoState));
    let params_ty = params_ty.unwrap_or_else(|| syn::parse_quote!(::flumen_sdk::NoParams));
    let variant = kind.variant();
    let fn_lifetimes: Vec<Lifetime> = sig
        .generics
        .lifetimes()
        .map(|l| l.lifetime.clone())
        .collect();
    let input_ty = relifetime(&input_ty, &fn_lifetimes, "'a");
    let output_ty = relifetime(&output_ty, &fn_lifetimes, "'static");
    let side_names = attr.sides.iter().map(|(n, _)| n.to_string());
    let side_types: Vec<Type> = attr
        .sides
        .iter()
        .map(|(_, t)| relifetime(t, &fn_lifetimes, "'static"))
        .collect();
    let side_shapes: Vec<TokenStream2> = side_types.iter().map(output_shape).collect();
    let side_types = side_types.iter();
    let output_shape = output_shape(&output_ty);
    let doc = format!("The flumen operator of [`{fn_name}`].");

    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(dead_code)]
        #vis struct #struct_name {
            params: #params_ty,
        }

        impl ::flumen_sdk::Operator for #struct_name {
            type Input<'a> = #input_ty;
            type Output = #output_ty;
            type Params = #params_ty;
            type State = #state_ty;
            const KIND: ::flumen_sdk::abi::OperatorKind = ::flumen_sdk::abi::OperatorKind::#variant;

            fn side_outputs() -> ::std::vec::Vec<::flumen_sdk::abi::SideOutput> {
                ::std::vec![#(::flumen_sdk::abi::SideOutput {
                    name: ::std::string::String::from(#side_names),
                    type_name: ::flumen_sdk::type_name::<#side_types>(),
                    shape: #side_shapes,
                }),*]
            }

            fn output_shape() -> ::core::option::Option<::flumen_sdk::abi::Shape> {
                #output_shape
            }

            fn new(params: #params_ty) -> ::core::result::Result<Self, ::std::string::String> {
                ::core::result::Result::Ok(#struct_name { params })
            }

            #[allow(clippy::needless_borrow, unused_variables)]
            fn process(
                &mut self,
                input: Self::Input<'_>,
                state: &mut #state_ty,
                out: &mut ::flumen_sdk::Outputs<'_>,
            ) -> ::core::result::Result<(), ::std::string::String> {
                let result = #call;
                #emit
                ::core::result::Result::Ok(())
            }
        }

        ::flumen_sdk::export!(#struct_name);
    })
}

/// The expression of an output type's shape: traced where the type is `Deserialize`, marked as
/// rendered by the host where the SDK vouches for its JSON (`flumen_sdk::render::vouch`).
fn output_shape(ty: &Type) -> TokenStream2 {
    quote! {{
        #[allow(unused_imports)]
        use ::flumen_sdk::shape::{Traced as _, Untraced as _, Unvouched as _, Vouched as _};
        let probe = ::flumen_sdk::shape::Probe::<#ty>::new();
        #[allow(clippy::needless_borrow)]
        (&probe).vouched((&probe).shape())
    }}
}

fn to_camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}
